# Sourced by the scripts after scripts/setup.sh: the project's virtual
# environment first on PATH (so `python3` is .venv's everywhere, in tests
# too), and the locations of the tools the setup installed.
_abmesh_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="$_abmesh_root/.venv"
export PATH="$_abmesh_root/.venv/bin:$HOME/.cargo/bin:$PATH"
ENVOY_BIN="${ENVOY_BIN:-$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')}"
export ENVOY_BIN
unset _abmesh_root
