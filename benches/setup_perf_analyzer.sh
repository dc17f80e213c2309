#!/usr/bin/env bash
# Installs Triton's perf_analyzer (the load client Triton users measure
# model servers with) into .tools/perf_analyzer/, without root and without
# touching any Python environment, and prints the path of the wrapper to
# run it with (the last line of its output).
#
# The PyPI `perf-analyzer` package is an empty placeholder; a working
# binary ships in the tritonclient==2.41.0 manylinux wheel, at
# tritonclient-2.41.0.data/data/bin/perf_analyzer. It links against
#   - libb64.so.0d: Debian's libb64-0d (fetched with `apt-get download`
#     and unpacked here when the system does not have it), and
#   - libcudart.so.12: PyPI's nvidia-cuda-runtime-cu12 (only the library
#     is taken from the wheel; no GPU is needed for HTTP or gRPC).
# Both wheels are pinned with their hashes in benches/perf_analyzer.txt
# (x86_64 Linux). The wrapper sets LD_LIBRARY_PATH to the unpacked
# libraries and runs the binary.
#
# Idempotent: nothing is fetched again once the wrapper is in place for the
# pinned versions. Used by benches/setup.sh and by the perf_analyzer test
# (sidecar/cli/tests/perf_analyzer.rs). Needs scripts/setup.sh's .venv (for
# pip) and, without libb64 on the system, apt-get and dpkg-deb.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\033[1;34m[perf_analyzer-setup]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[perf_analyzer-setup] FAILED:\033[0m %s\n' "$*" >&2; exit 1; }

pins=benches/perf_analyzer.txt
dest=.tools/perf_analyzer
wrapper="$dest/perf_analyzer"
stamp="$dest/.pins"
if [[ -x "$wrapper" ]] && cmp -s "$pins" "$stamp"; then
  echo "$PWD/$wrapper"
  exit 0
fi

[[ "$(uname -sm)" == "Linux x86_64" ]] ||
  die "the pinned perf_analyzer wheel is for Linux x86_64; this is $(uname -sm)"
python=.venv/bin/python3
[[ -x "$python" ]] || die "$python is missing: run scripts/setup.sh first"

rm -rf "$dest"
mkdir -p "$dest/bin" "$dest/lib" "$dest/wheels"
log "pip download -r $pins (hash-checked, into $dest/wheels)"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --require-hashes -r "$pins" -d "$dest/wheels" ||
  die "downloading the perf_analyzer wheels failed (pip's message is above); check the network access to PyPI"

# Only the binary and the library are taken out of the wheels.
"$python" - "$dest" <<'EOF' || die "unpacking perf_analyzer and libcudart from the wheels failed"
import glob, os, shutil, sys, zipfile
dest = sys.argv[1]
want = {
    "tritonclient-2.41.0.data/data/bin/perf_analyzer": "bin/perf_analyzer",
    "nvidia/cuda_runtime/lib/libcudart.so.12": "lib/libcudart.so.12",
}
for wheel in glob.glob(os.path.join(dest, "wheels", "*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name in want:
                out = os.path.join(dest, want.pop(name))
                with z.open(name) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.chmod(out, 0o755)
if want:
    sys.exit(f"not found in the wheels: {sorted(want)}")
EOF
rm -rf "$dest/wheels"

if ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
    die "libb64.so.0d is not installed and there is no apt-get/dpkg-deb to fetch it: install Debian's libb64-0d (or your system's libb64 0.x)"
  log "apt-get download libb64-0d (unpacked into $dest/lib)"
  debs="$(mktemp -d)"
  if ! (cd "$debs" && apt-get download libb64-0d >/dev/null 2>&1); then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq || die "apt-get update failed: check the network access to the Debian mirror"
    (cd "$debs" && apt-get download libb64-0d >/dev/null 2>&1) ||
      die "apt-get download libb64-0d failed: install libb64-0d by hand"
  fi
  dpkg-deb -x "$debs"/libb64-0d_*.deb "$debs/x" || die "unpacking libb64-0d failed"
  cp "$debs"/x/usr/lib/*/libb64.so.0d* "$dest/lib/" || die "libb64.so.0d is not in the libb64-0d package"
  rm -rf "$debs"
fi

cat >"$wrapper" <<'EOF'
#!/usr/bin/env bash
# Runs perf_analyzer with the libraries benches/setup_perf_analyzer.sh unpacked.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/bin/perf_analyzer" "$@"
EOF
chmod +x "$wrapper"
missing="$(LD_LIBRARY_PATH="$dest/lib" ldd "$dest/bin/perf_analyzer" 2>&1 | grep 'not found' || true)"
[[ -z "$missing" ]] || die "perf_analyzer lacks libraries: $missing"
cp "$pins" "$stamp"
log "ok: $wrapper"
echo "$PWD/$wrapper"
