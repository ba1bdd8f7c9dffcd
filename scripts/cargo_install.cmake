# Install-time step of the root CMakeLists.txt (colcon path): builds the Rust binaries against the
# interfaces just installed into CMAKE_INSTALL_PREFIX and installs them to lib/vlm3d (for `ros2 run`).
# Expects VLM3D_CARGO, VLM3D_SOURCE_DIR, VLM3D_TARGET_DIR and VLM3D_CARGO_PROFILE to be set.

set(ENV{AMENT_PREFIX_PATH} "${CMAKE_INSTALL_PREFIX}:$ENV{AMENT_PREFIX_PATH}")
set(ENV{CMAKE_PREFIX_PATH} "${CMAKE_INSTALL_PREFIX}:$ENV{CMAKE_PREFIX_PATH}")
set(ENV{LD_LIBRARY_PATH} "${CMAKE_INSTALL_PREFIX}/lib:$ENV{LD_LIBRARY_PATH}")
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
