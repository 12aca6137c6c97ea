#!/usr/bin/env bash
# Build edgefleet-agent_<version>_<arch>.deb: the edge agent in a self-contained virtual
# environment under /opt/edgefleet-agent, run by the device's own /usr/bin/python3.
#
#   packaging/build-deb.sh [--arch amd64|arm64] [--out DIR] [--compress xz|gzip|none]
#
# How the venv ends up correct at /opt/edgefleet-agent although it is built elsewhere:
# a venv is bound to its path only in three places: the `#!` line of its scripts, the
# activate scripts, and the `command =` line of pyvenv.cfg. The interpreter itself finds
# its site-packages relative to bin/python (it reads ../pyvenv.cfg), so the staged tree
# already works wherever it lies. We create the venv at STAGE/opt/edgefleet-agent, install
# with pip into its site-packages, then rewrite those three places to the final path and
# refuse the build if the staging path appears in any file. bin/python is a symlink to
# /usr/bin/python3, so the package depends on the distribution's python3 of the same
# minor version (the wheels of numpy and onnxruntime are built for one CPython ABI).
#
# Both architectures take the same route: pip resolves and downloads binary wheels for the
# target platform (`pip download --platform manylinux_2_N_<machine> --only-binary=:all:`)
# and installs them with `pip install --target` for that platform. No target code runs
# during the build, so an amd64 machine builds the arm64 package; the import smoke test
# runs only when the target is the build machine's own architecture.
set -euo pipefail

usage() {
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

ARCH="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
OUT="dist"
COMPRESS="xz"
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCH="${2:?--arch needs a value}"; shift 2 ;;
    --out) OUT="${2:?--out needs a value}"; shift 2 ;;
    --compress) COMPRESS="${2:?--compress needs a value}"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "build-deb: unknown argument $1" >&2; usage 2 ;;
  esac
done

die() { echo "build-deb: $*" >&2; exit 1; }

case "$ARCH" in
  amd64) MACHINE=x86_64 ;;
  arm64) MACHINE=aarch64 ;;
  *) die "unsupported architecture '$ARCH' (amd64 or arm64)" ;;
esac
case "$COMPRESS" in xz|gzip|none) ;; *) die "--compress: xz, gzip or none" ;; esac
command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (apt-get install dpkg)"
# Stripping the wheels' libraries needs binutils for the target machine.
if [ "$(uname -m)" = "$MACHINE" ]; then STRIP=strip; else STRIP="$MACHINE-linux-gnu-strip"; fi
command -v "$STRIP" >/dev/null \
  || die "$STRIP is missing (apt-get install binutils-${MACHINE//_/-}-linux-gnu, or binutils)"

REPO="$(cd "$(dirname "$0")/.." && pwd)"
HERE="$REPO/packaging"
PREFIX=/opt/edgefleet-agent
PACKAGE=edgefleet-agent
# The interpreter on the device. Its minor version fixes the wheels' ABI: build on (or for)
# the same distribution release as the devices (Debian 12 and Ubuntu 23.04: 3.11).
TARGET_PY="${TARGET_PY:-/usr/bin/python3}"
[ -x "$TARGET_PY" ] || die "$TARGET_PY is missing: install python3 and python3-venv"
PYVER="$("$TARGET_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
PYNEXT="$("$TARGET_PY" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')"
"$TARGET_PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "python3 is $PYVER; 3.10+ needed"
ABI="cp${PYVER/./}"
# The Python that runs pip during the build (any 3.10+ with pip 22.3 or newer).
if [ -z "${BUILD_PY:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then BUILD_PY="$REPO/.venv/bin/python"; else BUILD_PY=python3; fi
fi
"$BUILD_PY" -m pip --version >/dev/null 2>&1 || die "$BUILD_PY has no pip"

# Highest glibc the wheels may need: the build host's, or GLIBC_MAX=2.31 for older devices.
GLIBC_MAX="${GLIBC_MAX:-$(getconf GNU_LIBC_VERSION | cut -d' ' -f2)}"
[[ "$GLIBC_MAX" =~ ^2\.[0-9]+$ ]] || die "cannot tell the glibc version: set GLIBC_MAX=2.N"
GLIBC_MINOR="${GLIBC_MAX#2.}"
PLATFORMS=()
for ((m = GLIBC_MINOR; m >= 17; m--)); do PLATFORMS+=(--platform "manylinux_2_${m}_${MACHINE}"); done
PLATFORMS+=(--platform "manylinux2014_${MACHINE}")
PIP_TARGET_FLAGS=(--only-binary=:all: --implementation cp --python-version "$PYVER" --abi "$ABI"
  "${PLATFORMS[@]}")

WORK="$(mktemp -d "${TMPDIR:-/tmp}/edgefleet-deb.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
STAGE="$WORK/root"
VENV="$STAGE$PREFIX"
SITE="$VENV/lib/python$PYVER/site-packages"
PIPQ=(-q --disable-pip-version-check)

echo "build-deb: $PACKAGE for $ARCH (python $PYVER, glibc <= $GLIBC_MAX) in $WORK"

# 1. The project's wheel, built from a clean copy so the work tree gets no build/ litter.
mkdir -p "$WORK/src" "$WORK/wheels"
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' \
  -cf - pyproject.toml README.md edge_agent fleet_server converters | tar -C "$WORK/src" -xf -
"$BUILD_PY" -m pip wheel "${PIPQ[@]}" --no-deps -w "$WORK/wheels" "$WORK/src"
WHEEL="$(ls "$WORK"/wheels/edgefleet-*.whl)"
PYPI_VERSION="$(basename "$WHEEL" | cut -d- -f2)"
# PEP 440 pre-releases sort before the release in Debian only with a tilde.
VERSION="$(echo "$PYPI_VERSION" | sed -E 's/(a|b|rc|\.dev)([0-9]+)$/~\1\2/')"

# 2. The agent's dependencies only (no extras), as binary wheels for the target platform.
REQS=("$WHEEL")
[ "$PYVER" = "3.10" ] && REQS+=("tomli>=2")  # markers are read on the build Python
"$BUILD_PY" -m pip download "${PIPQ[@]}" -d "$WORK/wheels" "${PIP_TARGET_FLAGS[@]}" "${REQS[@]}"

# 3. The venv, created in place under the staging root, then filled by pip for the target.
"$TARGET_PY" -m venv --without-pip "$VENV" \
  || die "cannot create a venv with $TARGET_PY (apt-get install python3-venv)"
ln -sfn /usr/bin/python3 "$VENV/bin/python"  # the device's interpreter, whatever built it
rm -f "$VENV"/bin/activate*  # path-bound shell helpers; the service needs none
"$BUILD_PY" -m pip install "${PIPQ[@]}" --no-index --find-links "$WORK/wheels" --no-compile \
  --target "$SITE" "${PIP_TARGET_FLAGS[@]}" "${REQS[@]}"

# 4. Only the agent's command; shebangs point at the final path.
install -m 0755 "$SITE/bin/edge-agent" "$VENV/bin/edge-agent"
rm -rf "$SITE/bin"
sed -i "1s|^#!.*|#!$PREFIX/bin/python|" "$VENV/bin/edge-agent"
sed -i "s|^command = .*|command = /usr/bin/python3 -m venv $PREFIX|; s|^home = .*|home = /usr/bin|" \
  "$VENV/pyvenv.cfg"
sed -i -E "s|^(executable = ).*|\1/usr/bin/python$PYVER|" "$VENV/pyvenv.cfg"

# 5. Trim what cannot run on the device or only repeats what is there.
#  - fleet_server and converters: the server's code ships in the same wheel, but its
#    dependencies (FastAPI, SQLAlchemy, scikit-learn) are not installed: it could not import.
#  - onnxruntime's offline tooling (transformers, quantization, tools) imports onnx, which
#    the agent does not install; libonnxruntime.so is the C API library, which the Python
#    binding does not load (it links the runtime itself): 35 MB saved on amd64.
#  - test suites, bytecode caches (postinst compiles bytecode on the device).
rm -rf "$SITE/fleet_server" "$SITE/converters" \
  "$SITE/onnxruntime/transformers" "$SITE/onnxruntime/quantization" "$SITE/onnxruntime/tools"
rm -f "$SITE"/onnxruntime/capi/libonnxruntime.so*
find "$SITE" -depth -type d \( -name __pycache__ -o -name tests \) -exec rm -rf {} +
find "$SITE" -name '*.pyc' -delete
# The RECORD files name the trimmed files: dpkg owns the tree, pip must not manage it.
find "$SITE" -name RECORD -path '*.dist-info/*' -delete
find "$SITE" -name INSTALLER -path '*.dist-info/*' -exec sh -c 'echo dpkg > "$1"' _ {} \;
find "$SITE" -name direct_url.json -delete  # names the build directory
# Wheels carry their own modes; a package wants 0644 files and 0755 directories.
find "$STAGE" -type d -exec chmod 0755 {} +
find "$SITE" -type f -exec chmod 0644 {} +  # shared objects too: they are loaded, not run
find "$SITE" -name .gitignore -delete
# Wheels ship their shared objects unstripped (symbol tables, some debug info); the device
# needs neither. --strip-unneeded keeps the dynamic symbols that loading needs; the smoke
# test below loads every stripped library that the agent uses. Not the libraries that
# auditwheel grafted into <dist>.libs/: patchelf rewrote their headers, and strip breaks
# them ("ELF load command address/offset not page-aligned").
find "$SITE" -type f \( -name '*.so' -o -name '*.so.*' \) -not -path '*.libs/*' -print0 \
  | xargs -0 -r "$STRIP" --strip-unneeded --remove-section=.comment --remove-section=.note

# 6. The rest of the file system: command, config, unit, docs.
install -d "$STAGE/usr/bin" "$STAGE/etc/edge-agent" "$STAGE/lib/systemd/system" \
  "$STAGE/usr/share/doc/$PACKAGE" "$STAGE/usr/share/lintian/overrides" "$STAGE/DEBIAN"
ln -s "$PREFIX/bin/edge-agent" "$STAGE/usr/bin/edge-agent"
install -m 0644 "$HERE/agent.toml" "$STAGE/etc/edge-agent/agent.toml"
install -m 0644 "$HERE/systemd/edge-agent.service" "$STAGE/lib/systemd/system/edge-agent.service"
install -m 0644 "$HERE/deb/lintian-overrides" "$STAGE/usr/share/lintian/overrides/$PACKAGE"
gzip -9n -c "$HERE/deb/changelog" > "$STAGE/usr/share/doc/$PACKAGE/changelog.gz"
{
  cat "$HERE/deb/copyright"
  echo
  echo "Bundled Python distributions in $PREFIX (license texts in their *.dist-info):"
  "$BUILD_PY" - "$SITE" <<'EOF'
import sys
from email.parser import HeaderParser
from pathlib import Path

for meta in sorted(Path(sys.argv[1]).glob("*.dist-info/METADATA")):
    m = HeaderParser().parsestr(meta.read_text(encoding="utf-8", errors="replace"))
    lic = m.get("License-Expression") or ""
    if not lic:
        classifiers = [c.split(" :: ")[-1] for c in m.get_all("Classifier") or []
                       if c.startswith("License ::")]
        lic = ", ".join(classifiers) or (m.get("License") or "see dist-info").splitlines()[0]
    print(f" {m['Name']} {m['Version']}: {lic[:100]}")
EOF
} > "$STAGE/usr/share/doc/$PACKAGE/copyright"

# 7. Nothing may still name the staging directory.
if grep -rlF "$WORK" "$STAGE" >/dev/null 2>&1; then
  grep -rlF "$WORK" "$STAGE" >&2
  die "the files above still name the staging directory"
fi

# 8. Smoke test on the build machine's own architecture: the staged venv imports the agent
#    and its runtime, and none of the server's dependencies is there.
if [ "$(uname -m)" = "$MACHINE" ]; then
  cat > "$WORK/smoke.py" <<'EOF'
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import edge_agent
import numpy as np
import onnxruntime as ort
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

for mod in pkgutil.iter_modules(edge_agent.__path__):
    importlib.import_module(f"edge_agent.{mod.name}")
for absent in ("sklearn", "fastapi", "sqlalchemy", "scipy", "onnx", "fleet_server"):
    assert importlib.util.find_spec(absent) is None, f"{absent} must not be in the agent venv"
# The stripped libraries still work: BLAS, an ai.onnx.ml model, an ECDSA signature.
a = np.arange(16, dtype=np.float64).reshape(4, 4) + np.eye(4)
assert np.allclose(np.linalg.inv(a) @ a, np.eye(4))
model = Path(ort.__file__).parent / "datasets" / "logreg_iris.onnx"
sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
shape = [d if isinstance(d, int) else 1 for d in inp.shape]
sess.run(None, {inp.name: np.ones(shape, dtype=np.float32)})
key = ec.generate_private_key(ec.SECP256R1())
ecdsa = ec.ECDSA(hashes.SHA256())
key.public_key().verify(key.sign(b"x", ecdsa), b"x", ecdsa)
print("smoke test: edge_agent, numpy", np.__version__, "onnxruntime", ort.__version__)
EOF
  # -I: only the venv's own site-packages, never the current directory or PYTHONPATH;
  # -B: no bytecode in the package.
  "$VENV/bin/python" -I -B "$WORK/smoke.py" || die "the staged venv failed its smoke test"
  "$VENV/bin/python" -I -B "$VENV/bin/edge-agent" --help >/dev/null \
    || die "the staged edge-agent --help failed"
  if find "$SITE" -name __pycache__ | grep -q .; then die "bytecode was written into the stage"; fi
else
  echo "build-deb: $ARCH is not this machine's architecture: import smoke test skipped"
fi

# 9. Control files.
GLIBC_NEED="$("$BUILD_PY" - "$WORK/wheels" <<'EOF'
import re
import sys
from pathlib import Path

# Each wheel runs on the lowest glibc among its tags; the package needs the highest of those.
need = 17
for whl in Path(sys.argv[1]).glob("*.whl"):
    platforms = whl.stem.split("-")[-1].split(".")
    floors = [int(m.group(1)) for p in platforms if (m := re.match(r"manylinux_2_(\d+)_", p))]
    floors += [17 for p in platforms if p.startswith("manylinux2014")]
    if floors:
        need = max(need, min(floors))
print(f"2.{need}")
EOF
)"
INSTALLED_KB="$(du -sk --apparent-size --exclude=DEBIAN "$STAGE" | cut -f1)"
sed -e "s|@VERSION@|$VERSION|; s|@ARCH@|$ARCH|; s|@INSTALLED_SIZE@|$INSTALLED_KB|" \
  -e "s|@PYVER@|$PYVER|g; s|@PYNEXT@|$PYNEXT|g; s|@GLIBC@|$GLIBC_NEED|" \
  "$HERE/deb/control.in" > "$STAGE/DEBIAN/control"
for f in postinst prerm postrm; do install -m 0755 "$HERE/deb/$f" "$STAGE/DEBIAN/$f"; done
install -m 0644 "$HERE/deb/conffiles" "$STAGE/DEBIAN/conffiles"
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -print0 | sort -z \
  | xargs -0 md5sum | sed 's|  \./|  |') > "$STAGE/DEBIAN/md5sums"
chmod 0644 "$STAGE/DEBIAN/md5sums"

mkdir -p "$OUT"
DEB="$OUT/${PACKAGE}_${VERSION}_${ARCH}.deb"
ZOPT=(-Z"$COMPRESS")
[ "$COMPRESS" = xz ] && ZOPT+=(-z6)
dpkg-deb --root-owner-group "${ZOPT[@]}" --build "$STAGE" "$DEB" >/dev/null
echo "build-deb: wrote $DEB ($(du -h "$DEB" | cut -f1), installed $((INSTALLED_KB / 1024)) MiB)"
