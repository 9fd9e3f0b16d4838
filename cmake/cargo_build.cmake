# Script mode (cmake -P), run by the dspnet_cargo target of cmake/CMakeLists.txt:
# 1. cargo rustc --release --lib with the SONAME link argument and --print native-static-libs
#    (cargo replays the note when the crate is fresh);
# 2. writes dspnetConfig.cmake and dspnet.pc into GEN_DIR with that list of native libraries.

set(_args rustc --release --lib --manifest-path "${SOURCE_DIR}/Cargo.toml" --target-dir "${TARGET_DIR}")
if(FEATURES)
  list(APPEND _args --features "${FEATURES}")
endif()
list(APPEND _args -- -C "link-arg=-Wl,-soname,libdspnet.so.${ABI}" --print native-static-libs)

execute_process(COMMAND "${CARGO}" ${_args}
  WORKING_DIRECTORY "${SOURCE_DIR}"
  RESULT_VARIABLE _rc
  OUTPUT_VARIABLE _out
  ERROR_VARIABLE _err)
message("${_out}${_err}")
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "cargo failed (exit ${_rc})")
endif()

string(REGEX MATCH "native-static-libs: ([^\r\n]*)" _m "${_err}")
if(NOT _m)
  message(FATAL_ERROR "rustc did not print native-static-libs; cannot write the static link flags")
endif()
string(STRIP "${CMAKE_MATCH_1}" DSPNET_NATIVE_STATIC_LIBS_FLAGS)
# "-lgcc_s -lutil ..." -> "gcc_s;util;..." for CMake.
separate_arguments(_flags UNIX_COMMAND "${DSPNET_NATIVE_STATIC_LIBS_FLAGS}")
set(DSPNET_NATIVE_STATIC_LIBS "")
foreach(_f IN LISTS _flags)
  string(REGEX REPLACE "^-l" "" _f "${_f}")
  list(APPEND DSPNET_NATIVE_STATIC_LIBS "${_f}")
endforeach()

set(DSPNET_ABI_VERSION "${ABI}")
set(DSPNET_VERSION "${VERSION}")
set(DSPNET_LIBDIR "${LIBDIR}")
set(DSPNET_CONFIG_TO_PREFIX "${CONFIG_TO_PREFIX}")
set(DSPNET_PC_TO_PREFIX "${PC_TO_PREFIX}")
configure_file("${TEMPLATE_DIR}/dspnetConfig.cmake.in" "${GEN_DIR}/dspnetConfig.cmake" @ONLY)
configure_file("${TEMPLATE_DIR}/dspnet.pc.in" "${GEN_DIR}/dspnet.pc" @ONLY)
