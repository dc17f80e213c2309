# Sourced by the scripts: locations of the tools the setup installed.
ENVOY_BIN="${ENVOY_BIN:-$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')}"
export ENVOY_BIN
export PATH="$HOME/.cargo/bin:$PATH"
