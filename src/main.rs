//! The `dspnet` command-line tool.

mod cli;

fn main() -> std::process::ExitCode {
    // Rust ignores SIGPIPE, so `dspnet info W | head` would panic on the closed pipe; a command-line tool
    // should end quietly instead, as other Unix tools do.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    cli::main()
}
