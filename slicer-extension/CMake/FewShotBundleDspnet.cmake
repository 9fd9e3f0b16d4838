# Bundles the dspnet Python package (python/dspnet, the extension's binding) as
#   <build or install>/lib/Slicer-X.Y/qt-scripted-modules/dspnet/
# and puts libdspnet (and optionally a default model) into its library folder dspnet/lib/, which is
# where the binding looks first after $DSPNET_LIBRARY (the pip wheel's layout). The library's own
# default-model search then finds dspnet/lib/weights/dspnet-default.safetensors.
#
# Where the library comes from, first that applies:
#   FEWSHOT_DSPNET_LIBRARY  a prebuilt libdspnet.so (e.g. from `cargo build --release`, or the CUDA build)
#   find_package(dspnet)    an installed libdspnet CMake package (cmake -S cmake -B build && cmake --install build)
#   FEWSHOT_BUILD_DSPNET    build it from this repository with cargo through ../cmake (needs Rust; the
#                           Slicer extensions factory has none, so a factory build must use one of the above)
# None of them: the extension still builds; the binding then needs $DSPNET_LIBRARY or a system libdspnet.
#
# FEWSHOT_DEFAULT_WEIGHTS   a .safetensors file bundled as the default model (default: the repository's
#                           weights/dspnet-default.safetensors).

set(FEWSHOT_DSPNET_LIBRARY "" CACHE FILEPATH "Prebuilt libdspnet shared library to bundle with the extension")
option(FEWSHOT_BUILD_DSPNET "Build libdspnet with cargo from this repository (../cmake) when no prebuilt library is given" ON)
# Default: the repository's shipped model.
set(_fewshot_shipped_model "${CMAKE_CURRENT_LIST_DIR}/../../weights/dspnet-default.safetensors")
if(NOT EXISTS "${_fewshot_shipped_model}")
  set(_fewshot_shipped_model "")
endif()
set(FEWSHOT_DEFAULT_WEIGHTS "${_fewshot_shipped_model}" CACHE FILEPATH "Model weights (.safetensors) to bundle as the default model")

set(_fewshot_pkg_build_dir "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/dspnet")
set(_fewshot_pkg_install_dir "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/dspnet")
set(_fewshot_lib_build_dir "${_fewshot_pkg_build_dir}/lib")
set(_fewshot_lib_install_dir "${_fewshot_pkg_install_dir}/lib")

# The package's Python files, in the build tree (Slicer run from it) and in the extension package.
file(GLOB _fewshot_dspnet_py "${CMAKE_CURRENT_LIST_DIR}/../../python/dspnet/*.py")
if(NOT _fewshot_dspnet_py)
  message(FATAL_ERROR "FewShotSegment: python/dspnet (the binding) not found next to slicer-extension/")
endif()
foreach(_py ${_fewshot_dspnet_py})
  get_filename_component(_name "${_py}" NAME)
  configure_file("${_py}" "${_fewshot_pkg_build_dir}/${_name}" COPYONLY)
endforeach()
install(FILES ${_fewshot_dspnet_py} DESTINATION "${_fewshot_pkg_install_dir}" COMPONENT RuntimeLibraries)
set(_fewshot_dspnet_file "")
set(_fewshot_dspnet_depends "")

if(FEWSHOT_DSPNET_LIBRARY)
  set(_fewshot_dspnet_file "${FEWSHOT_DSPNET_LIBRARY}")
else()
  find_package(dspnet 0.1 CONFIG QUIET)
  if(dspnet_FOUND)
    get_target_property(_fewshot_dspnet_file dspnet::dspnet IMPORTED_LOCATION_RELEASE)
    if(NOT _fewshot_dspnet_file)
      get_target_property(_fewshot_dspnet_file dspnet::dspnet IMPORTED_LOCATION)
    endif()
  elseif(FEWSHOT_BUILD_DSPNET)
    find_program(FEWSHOT_CARGO cargo HINTS "$ENV{CARGO_HOME}/bin" "$ENV{HOME}/.cargo/bin")
    if(FEWSHOT_CARGO)
      include(ExternalProject)
      get_filename_component(_fewshot_repo "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)
      file(STRINGS "${_fewshot_repo}/include/dspnet.h" _abi_line REGEX "^#define DSPNET_ABI_VERSION [0-9]+$")
      string(REGEX REPLACE "^#define DSPNET_ABI_VERSION ([0-9]+)$" "\\1" _fewshot_abi "${_abi_line}")
      set(_fewshot_prefix "${CMAKE_BINARY_DIR}/dspnet-install")
      ExternalProject_Add(FewShotSegment_dspnet
        SOURCE_DIR "${_fewshot_repo}/cmake"
        BINARY_DIR "${CMAKE_BINARY_DIR}/dspnet-build"
        INSTALL_DIR "${_fewshot_prefix}"
        CMAKE_ARGS -DCMAKE_INSTALL_PREFIX:PATH=<INSTALL_DIR> -DCMAKE_INSTALL_LIBDIR:PATH=lib
                   -DDSPNET_CARGO:FILEPATH=${FEWSHOT_CARGO}
        BUILD_ALWAYS 1
        BUILD_BYPRODUCTS "${_fewshot_prefix}/lib/libdspnet.so.${_fewshot_abi}")
      set(_fewshot_dspnet_file "${_fewshot_prefix}/lib/libdspnet.so.${_fewshot_abi}")
      set(_fewshot_dspnet_depends FewShotSegment_dspnet)
    else()
      message(WARNING "FewShotSegment: cargo not found, libdspnet is not built. Set FEWSHOT_DSPNET_LIBRARY to a prebuilt libdspnet.so or dspnet_DIR to an installed package.")
    endif()
  endif()
endif()

if(_fewshot_dspnet_file)
  message(STATUS "FewShotSegment: bundling libdspnet from ${_fewshot_dspnet_file}")
  # Build tree (so that Slicer run from the build tree finds it) ...
  add_custom_command(
    OUTPUT "${_fewshot_lib_build_dir}/libdspnet.so"
    COMMAND ${CMAKE_COMMAND} -E make_directory "${_fewshot_lib_build_dir}"
    COMMAND ${CMAKE_COMMAND} -E copy "${_fewshot_dspnet_file}" "${_fewshot_lib_build_dir}/libdspnet.so"
    DEPENDS ${_fewshot_dspnet_depends}
    COMMENT "Copying libdspnet into dspnet/lib"
    VERBATIM)
  add_custom_target(FewShotSegmentBundleDspnet ALL DEPENDS "${_fewshot_lib_build_dir}/libdspnet.so")
  # ... and the extension package.
  install(FILES "${_fewshot_dspnet_file}"
    DESTINATION "${_fewshot_lib_install_dir}"
    RENAME libdspnet.so
    PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE
    COMPONENT RuntimeLibraries)
else()
  message(STATUS "FewShotSegment: libdspnet not bundled; set DSPNET_LIBRARY at run time or install it system-wide")
endif()

if(FEWSHOT_DEFAULT_WEIGHTS)
  file(MAKE_DIRECTORY "${_fewshot_lib_build_dir}/weights")
  configure_file("${FEWSHOT_DEFAULT_WEIGHTS}" "${_fewshot_lib_build_dir}/weights/dspnet-default.safetensors" COPYONLY)
  install(FILES "${FEWSHOT_DEFAULT_WEIGHTS}"
    DESTINATION "${_fewshot_lib_install_dir}/weights"
    RENAME dspnet-default.safetensors
    COMPONENT RuntimeLibraries)
endif()
