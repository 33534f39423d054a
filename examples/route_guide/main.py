"""Serve RouteGuide and exercise all four method kinds: inproc by default, every transport with --all.

python examples/route_guide/main.py
python examples/route_guide/main.py --all        # gRPC, HTTP and NATS (HTTP/1.1 has no bidi)
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _support import generate_stubs, run_example  # noqa: E402

generate_stubs(HERE)

from routeguide.v1.route_guide_pb2 import Point, Rectangle, RouteNote  # noqa: E402
from routeguide.v1.route_guide_protobind import RouteGuideClient  # noqa: E402
from service import FEATURES, RouteGuide  # noqa: E402

import protobind  # noqa: E402


async def call(url: str, spot: int) -> None:
    async with protobind.connect(url) as channel:
        client = RouteGuideClient(channel)
        feature = await client.get_feature(Point(latitude=407838351, longitude=-746143763), timeout=5)
        print(f"  get_feature    -> {feature.name!r}")
        box = Rectangle(
            lo=Point(latitude=400000000, longitude=-750000000),
            hi=Point(latitude=420000000, longitude=-730000000),
        )
        names = [f.name async for f in client.list_features(box, timeout=5)]
        print(f"  list_features  -> {len(names)} features")
        summary = await client.record_route([f.location for f in FEATURES], timeout=5)
        print(f"  record_route   -> {summary.point_count} points, {summary.distance} m")
        if url.startswith(("http://", "https://")):
            print("  route_chat     -> skipped: bidi streaming needs HTTP/2 (answers UNIMPLEMENTED here)")
            return
        here = Point(latitude=spot, longitude=1)  # a fresh spot per transport: one server, shared notes
        notes = [RouteNote(location=here, message=m) for m in ("first", "second", "third")]
        replies = [n.message async for n in client.route_chat(notes, timeout=5)]
        print(f"  route_chat     -> {replies}")


if __name__ == "__main__":
    run_example(RouteGuide(), call, "inproc://route_guide", __doc__)
