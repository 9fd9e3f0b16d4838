//! Locating the entries of a `torch.save` zip archive held in memory.
//!
//! The `zip` crate is tried first. If it rejects the archive, a small reader of our own walks the
//! end-of-central-directory record (and its zip64 variant), the central directory and the local
//! headers, the way Python's `zipfile` does. Only stored (uncompressed) entries can be read; that is
//! all `torch.save` writes.
//!
//! Why the fallback exists (`official_subset_zipedge.pth`): `torch.save` (PyTorch's miniz writer)
//! always ends the archive with a zip64 end-of-central-directory record (56 bytes) and a zip64
//! locator (20 bytes) between the central directory and the classic EOCD, even when no field needs
//! zip64. The classic EOCD holds ordinary values, so zip 9.8.2 takes its zip32 branch, which ignores
//! those 76 bytes and guesses that the central directory starts at `eocd_offset - cd_size`, i.e.
//! 76 bytes after its real start. The first central-directory header, for `<prefix>/data.pkl`, is
//! 46 + len(name) bytes long; with a 21-character prefix the name is 30 bytes and the header exactly
//! 76 bytes, so the guessed position holds a genuine `PK\x01\x02` signature (the second header).
//! The crate accepts it, concludes that 76 bytes of junk were prepended to the archive, shifts every
//! offset by 76 and, after reading the real headers, lands on the zip64 record where it expected the
//! last header: "Invalid Central Directory header". Python's `zipfile` subtracts the zip64 record
//! sizes when it computes the directory position, so it reads the file fine; so does the fallback.

use std::io::Cursor;

/// One archive member, located in the archive bytes.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub name: String,
    /// Absolute offset of the member data in the archive bytes.
    pub data_start: usize,
    /// Size of the stored data (compressed size; equal to the real size for stored entries).
    pub size: usize,
    /// `None` for stored entries, otherwise a description of the compression method.
    pub compression: Option<String>,
    pub encrypted: bool,
}

impl Entry {
    /// The member bytes; fails for compressed or encrypted entries.
    pub fn bytes<'a>(&self, archive: &'a [u8]) -> Result<&'a [u8], String> {
        if self.encrypted {
            return Err(format!("archive member '{}' is encrypted", self.name));
        }
        if let Some(method) = &self.compression {
            return Err(format!(
                "archive member '{}' is compressed ({method}); torch.save stores members uncompressed \
                 and only stored members are supported: re-save the checkpoint with torch.save",
                self.name
            ));
        }
        let end = self.data_start.checked_add(self.size).ok_or("member size overflows")?;
        archive
            .get(self.data_start..end)
            .ok_or_else(|| format!("archive member '{}' extends past the end of the file", self.name))
    }
}

/// How the archive was indexed (useful in diagnostics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reader {
    ZipCrate,
    Fallback,
}

/// Index every member of the zip archive `bytes`. Errors are plain descriptions; the caller wraps
/// them into the crate error type.
pub(crate) fn index(bytes: &[u8]) -> Result<(Vec<Entry>, Reader), String> {
    match index_with_zip_crate(bytes) {
        Ok(entries) => Ok((entries, Reader::ZipCrate)),
        Err(crate_err) => match index_fallback(bytes) {
            Ok(entries) => Ok((entries, Reader::Fallback)),
            Err(fallback_err) => Err(format!("zip crate: {crate_err}; fallback reader: {fallback_err}")),
        },
    }
}

fn index_with_zip_crate(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let mut entries = Vec::new();
    for i in 0..archive.len() {
        let file = archive.by_index_raw(i).map_err(|e| e.to_string())?;
        let name = match file.name() {
            Ok(n) => n.into_owned(),
            Err(_) => String::from_utf8_lossy(file.name_raw()).into_owned(),
        };
        let compression = match file.compression() {
            zip::CompressionMethod::Stored => None,
            other => Some(format!("{other:?}")),
        };
        let encrypted = file.encrypted();
        let data_start = file.data_start().ok_or_else(|| format!("no data offset for member '{name}'"))?;
        let data_start = usize::try_from(data_start).map_err(|_| "member offset overflows".to_string())?;
        let size = usize::try_from(file.compressed_size()).map_err(|_| "member size overflows".to_string())?;
        if data_start.checked_add(size).is_none_or(|end| end > bytes.len()) {
            return Err(format!("member '{name}' extends past the end of the file"));
        }
        entries.push(Entry { name, data_start, size, compression, encrypted });
    }
    Ok(entries)
}

const SIG_LOCAL: u32 = 0x0403_4b50;
const SIG_CENTRAL: u32 = 0x0201_4b50;
const SIG_EOCD: u32 = 0x0605_4b50;
const SIG_EOCD64: u32 = 0x0606_4b50;
const SIG_EOCD64_LOCATOR: u32 = 0x0706_4b50;
const EOCD_LEN: usize = 22;
const EOCD64_LEN: usize = 56;
const LOCATOR_LEN: usize = 20;
const CENTRAL_LEN: usize = 46;
const LOCAL_LEN: usize = 30;

fn rd_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}
fn rd_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}
fn rd_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

fn to_usize(v: u64, what: &str) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{what} does not fit in memory"))
}

/// Find the classic end-of-central-directory record: the last `PK\x05\x06` whose comment ends
/// within the file (searching at most the 64 KiB a comment can span).
fn find_eocd(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < EOCD_LEN {
        return None;
    }
    let last = bytes.len() - EOCD_LEN;
    let first = last.saturating_sub(u16::MAX as usize);
    (first..=last).rev().find(|&pos| {
        rd_u32(bytes, pos) == Some(SIG_EOCD)
            && rd_u16(bytes, pos + 20).is_some_and(|c| pos + EOCD_LEN + c as usize <= bytes.len())
    })
}

/// True when `bytes` holds no end-of-central-directory record at all (a cut-short archive).
pub(crate) fn lacks_eocd(bytes: &[u8]) -> bool {
    find_eocd(bytes).is_none()
}

fn index_fallback(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let eocd = find_eocd(bytes).ok_or("no end-of-central-directory record (truncated file?)")?;
    let disk = rd_u16(bytes, eocd + 4).ok_or("short EOCD")?;
    let cd_disk = rd_u16(bytes, eocd + 6).ok_or("short EOCD")?;
    let mut count = u64::from(rd_u16(bytes, eocd + 10).ok_or("short EOCD")?);
    let mut cd_size = u64::from(rd_u32(bytes, eocd + 12).ok_or("short EOCD")?);
    let mut cd_offset = u64::from(rd_u32(bytes, eocd + 16).ok_or("short EOCD")?);
    if disk != 0 || cd_disk != 0 {
        return Err("multi-disk zip archives are not supported".into());
    }
    // The end of the central directory: the zip64 record when there is one, else the EOCD.
    let mut cd_end = eocd;
    if eocd >= LOCATOR_LEN && rd_u32(bytes, eocd - LOCATOR_LEN) == Some(SIG_EOCD64_LOCATOR) {
        let loc = eocd - LOCATOR_LEN;
        let disks = rd_u32(bytes, loc + 16).ok_or("short zip64 locator")?;
        if disks > 1 {
            return Err("multi-disk zip archives are not supported".into());
        }
        // Like Python's zipfile, expect the zip64 record right before its locator.
        let rec = loc.checked_sub(EOCD64_LEN).ok_or("zip64 record does not fit before its locator")?;
        if rd_u32(bytes, rec) != Some(SIG_EOCD64) {
            return Err("zip64 locator present but no zip64 end-of-central-directory record before it".into());
        }
        let z_disk = rd_u32(bytes, rec + 16).ok_or("short zip64 record")?;
        let z_cd_disk = rd_u32(bytes, rec + 20).ok_or("short zip64 record")?;
        if z_disk != 0 || z_cd_disk != 0 {
            return Err("multi-disk zip archives are not supported".into());
        }
        count = rd_u64(bytes, rec + 32).ok_or("short zip64 record")?;
        cd_size = rd_u64(bytes, rec + 40).ok_or("short zip64 record")?;
        cd_offset = rd_u64(bytes, rec + 48).ok_or("short zip64 record")?;
        cd_end = rec;
    }
    let cd_size = to_usize(cd_size, "central directory size")?;
    let cd_offset = to_usize(cd_offset, "central directory offset")?;
    // Bytes prepended to the archive (0 for torch.save files), computed as Python's zipfile does.
    let concat = cd_end
        .checked_sub(cd_size)
        .and_then(|start| start.checked_sub(cd_offset))
        .ok_or("central directory offset/size point past the end-of-central-directory record")?;
    let cd_start = cd_offset + concat;
    if count > (cd_size / CENTRAL_LEN) as u64 {
        return Err(format!("central directory of {cd_size} bytes cannot hold {count} entries"));
    }
    let cd = &bytes[cd_start..cd_start + cd_size];
    let mut entries = Vec::with_capacity(count as usize);
    let mut p = 0usize;
    for i in 0..count {
        let short = || format!("central directory entry {i} is cut short");
        if rd_u32(cd, p) != Some(SIG_CENTRAL) {
            return Err(format!("bad signature for central directory entry {i}"));
        }
        let flags = rd_u16(cd, p + 8).ok_or_else(short)?;
        let method = rd_u16(cd, p + 10).ok_or_else(short)?;
        let mut comp_size = u64::from(rd_u32(cd, p + 20).ok_or_else(short)?);
        let mut uncomp_size = u64::from(rd_u32(cd, p + 24).ok_or_else(short)?);
        let name_len = rd_u16(cd, p + 28).ok_or_else(short)? as usize;
        let extra_len = rd_u16(cd, p + 30).ok_or_else(short)? as usize;
        let comment_len = rd_u16(cd, p + 32).ok_or_else(short)? as usize;
        let mut lho = u64::from(rd_u32(cd, p + 42).ok_or_else(short)?);
        let name_start = p + CENTRAL_LEN;
        let name_raw = cd.get(name_start..name_start + name_len).ok_or_else(short)?;
        let extra = cd.get(name_start + name_len..name_start + name_len + extra_len).ok_or_else(short)?;
        let name: String = match std::str::from_utf8(name_raw) {
            Ok(s) => s.to_string(),
            Err(_) => String::from_utf8_lossy(name_raw).into_owned(),
        };
        // zip64 extended information: the 64-bit values replace saturated 32-bit fields, in order.
        let mut e = 0usize;
        while e + 4 <= extra.len() {
            let id = rd_u16(extra, e).unwrap_or(0);
            let len = rd_u16(extra, e + 2).unwrap_or(0) as usize;
            let body = extra.get(e + 4..e + 4 + len).ok_or_else(|| format!("bad extra field in entry '{name}'"))?;
            if id == 0x0001 {
                let mut q = 0usize;
                for field in [&mut uncomp_size, &mut comp_size, &mut lho] {
                    if *field == u64::from(u32::MAX) {
                        *field = rd_u64(body, q).ok_or_else(|| format!("bad zip64 field in entry '{name}'"))?;
                        q += 8;
                    }
                }
            }
            e += 4 + len;
        }
        if method == 0 && uncomp_size != comp_size {
            return Err(format!("stored member '{name}' has different compressed and uncompressed sizes"));
        }
        let size = to_usize(comp_size, "member size")?;
        let lho = to_usize(lho, "local header offset")?.checked_add(concat).ok_or("local header offset overflows")?;
        if rd_u32(bytes, lho) != Some(SIG_LOCAL) {
            return Err(format!("no local header at offset {lho} for member '{name}'"));
        }
        let l_name = rd_u16(bytes, lho + 26).ok_or("short local header")? as usize;
        let l_extra = rd_u16(bytes, lho + 28).ok_or("short local header")? as usize;
        let data_start = lho + LOCAL_LEN + l_name + l_extra;
        if data_start.checked_add(size).is_none_or(|end| end > bytes.len()) {
            return Err(format!("member '{name}' extends past the end of the file"));
        }
        let compression = match method {
            0 => None,
            8 => Some("deflate".to_string()),
            m => Some(format!("method {m}")),
        };
        entries.push(Entry { name, data_start, size, compression, encrypted: flags & 1 != 0 });
        p = name_start + name_len + extra_len + comment_len;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_rejects_garbage_without_panicking() {
        for len in 0..200usize {
            let mut v: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            if len >= 22 {
                let at = len - 22;
                v[at..at + 4].copy_from_slice(&SIG_EOCD.to_le_bytes());
            }
            let _ = index_fallback(&v);
        }
    }
}
