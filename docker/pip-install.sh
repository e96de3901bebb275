#!/bin/sh
# pip install inside an image build: uses the BuildKit secret `pip-ca` as pip's CA bundle when the
# build was given one (an index behind a TLS-inspecting proxy), and the wheels mounted at /wheels
# (empty unless the build was given WHEELS=dir). Arguments go to pip install.
set -eu
if [ -s /run/secrets/pip-ca ]; then
  export PIP_CERT=/run/secrets/pip-ca
fi
exec pip install --find-links /wheels "$@"
