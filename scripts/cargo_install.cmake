# Install-time step of the root CMakeLists.txt (colcon path): builds the Rust binaries against the
# interfaces just installed into CMAKE_INSTALL_PREFIX and installs them to lib/vlm3d (for `ros2 run`).
# Expects VLM3D_CARGO, VLM3D_SOURCE_DIR, VLM3D_TARGET_DIR and VLM3D_CARGO_PROFILE to be set.

# r2r generates its bindings from the interface packages on AMENT_PREFIX_PATH and CMAKE_PREFIX_PATH, and cargo
# rebuilds them (and everything above them: minutes) whenever either variable differs from the build before. So
# when the calling environment already provides this package with the very interface definitions just installed
# (the prefix of scripts/setup.sh, with env.sh sourced), cargo runs in that environment unchanged, and a target
# directory that `cargo build` used there (VLM3D_CARGO_TARGET_DIR) is reused as it is: the binaries link the same
# interface libraries by name, and at run time the workspace's install/setup.bash puts this prefix's copies first.
# Otherwise (a system ROS 2 without vlm3d, or other definitions) the install prefix goes first.
function(vlm3d_interfaces_of prefix out)
  set(_index "${prefix}/share/ament_index/resource_index/rosidl_interfaces/vlm3d")
  if(NOT EXISTS "${_index}")
    set(${out} "" PARENT_SCOPE)
    return()
  endif()
  file(STRINGS "${_index}" _files)
  set(_sums "")
  foreach(_f IN LISTS _files)
    set(_path "${prefix}/share/vlm3d/${_f}")
    if(EXISTS "${_path}")
      file(SHA256 "${_path}" _sum)
    else()
      set(_sum missing)
    endif()
    string(APPEND _sums "${_f}=${_sum};")
  endforeach()
  set(${out} "${_sums}" PARENT_SCOPE)
endfunction()

vlm3d_interfaces_of("${CMAKE_INSTALL_PREFIX}" _installed)
set(_provided "")
string(REPLACE ":" ";" _prefixes "$ENV{AMENT_PREFIX_PATH}")
foreach(_p IN LISTS _prefixes)
  if(_p AND EXISTS "${_p}/share/ament_index/resource_index/packages/vlm3d")
    vlm3d_interfaces_of("${_p}" _provided)
    set(_provider "${_p}")
    break()
  endif()
endforeach()
if(NOT _installed STREQUAL "" AND _provided STREQUAL _installed)
  message(STATUS "vlm3d: cargo in the calling environment (${_provider} provides the same vlm3d interfaces)")
else()
  set(ENV{AMENT_PREFIX_PATH} "${CMAKE_INSTALL_PREFIX}:$ENV{AMENT_PREFIX_PATH}")
  set(ENV{CMAKE_PREFIX_PATH} "${CMAKE_INSTALL_PREFIX}:$ENV{CMAKE_PREFIX_PATH}")
  set(ENV{LD_LIBRARY_PATH} "${CMAKE_INSTALL_PREFIX}/lib:$ENV{LD_LIBRARY_PATH}")
endif()
if("$ENV{IDL_PACKAGE_FILTER}" STREQUAL "")
  file(STRINGS "${VLM3D_SOURCE_DIR}/scripts/ros_idl_packages.txt" _pkgs REGEX "^[a-z0-9_]+$")
  list(JOIN _pkgs ";" _filter)
  set(ENV{IDL_PACKAGE_FILTER} "${_filter}")
endif()

message(STATUS "vlm3d: cargo build --profile ${VLM3D_CARGO_PROFILE} (IDL_PACKAGE_FILTER=$ENV{IDL_PACKAGE_FILTER})")
execute_process(
  COMMAND "${VLM3D_CARGO}" build --locked --bins --profile "${VLM3D_CARGO_PROFILE}"
          --manifest-path "${VLM3D_SOURCE_DIR}/Cargo.toml" --target-dir "${VLM3D_TARGET_DIR}"
  RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "vlm3d: cargo build failed (exit ${_rc})")
endif()

if(VLM3D_CARGO_PROFILE STREQUAL "dev")
  set(_out "${VLM3D_TARGET_DIR}/debug")
else()
  set(_out "${VLM3D_TARGET_DIR}/${VLM3D_CARGO_PROFILE}")
endif()
file(GLOB _candidates LIST_DIRECTORIES false "${_out}/*")
foreach(_f IN LISTS _candidates)
  get_filename_component(_name "${_f}" NAME)
  # Executables are the extension-less files cargo leaves in the profile directory.
  if(NOT _name MATCHES "\\.")
    file(INSTALL "${_f}" DESTINATION "${CMAKE_INSTALL_PREFIX}/lib/vlm3d" USE_SOURCE_PERMISSIONS)
  endif()
endforeach()
