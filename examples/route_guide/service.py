"""RouteGuide: the four method kinds on a tiny in-memory map."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator

from routeguide.v1.route_guide_pb2 import Feature, Point, Rectangle, RouteNote, RouteSummary
from routeguide.v1.route_guide_protobind import RouteGuideService

import protobind

FEATURES = [
    Feature(name="Patriots Path, Mendham, NJ", location=Point(latitude=407838351, longitude=-746143763)),
    Feature(name="101 New Jersey 10, Whippany, NJ", location=Point(latitude=408122808, longitude=-743999179)),
    Feature(
        name="4001 Tremley Point Road, Linden, NJ", location=Point(latitude=406337092, longitude=-742479)
    ),
    Feature(name="", location=Point(latitude=409146138, longitude=-746188906)),
]


def _key(point: Point) -> tuple[int, int]:
    return point.latitude, point.longitude


def distance(a: Point, b: Point) -> int:
    """Metres between two E7 points along a great circle (haversine)."""
    lat1, lat2 = math.radians(a.latitude / 1e7), math.radians(b.latitude / 1e7)
    dlat = lat2 - lat1
    dlon = math.radians((b.longitude - a.longitude) / 1e7)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return int(2 * 6_371_000 * math.asin(math.sqrt(h)))


class RouteGuide(RouteGuideService):
    def __init__(self, features: list[Feature] = FEATURES) -> None:
        self.features = {_key(f.location): f for f in features}
        self.notes: defaultdict[tuple[int, int], list[RouteNote]] = defaultdict(list)

    async def get_feature(self, request: Point, context: protobind.Context) -> Feature:
        return self.features.get(_key(request)) or Feature(location=request)

    async def list_features(self, request: Rectangle, context: protobind.Context) -> AsyncIterator[Feature]:
        lo_lat, hi_lat = sorted((request.lo.latitude, request.hi.latitude))
        lo_lon, hi_lon = sorted((request.lo.longitude, request.hi.longitude))
        for feature in self.features.values():
            loc = feature.location
            if feature.name and lo_lat <= loc.latitude <= hi_lat and lo_lon <= loc.longitude <= hi_lon:
                yield feature

    async def record_route(self, requests: AsyncIterator[Point], context: protobind.Context) -> RouteSummary:
        summary = RouteSummary()
        previous: Point | None = None
        start = time.monotonic()
        async for point in requests:
            summary.point_count += 1
            if self.features.get(_key(point), Feature()).name:
                summary.feature_count += 1
            if previous is not None:
                summary.distance += distance(previous, point)
            previous = point
        summary.elapsed_time = int(time.monotonic() - start)
        return summary

    async def route_chat(
        self, requests: AsyncIterator[RouteNote], context: protobind.Context
    ) -> AsyncIterator[RouteNote]:
        async for note in requests:
            for earlier in self.notes[_key(note.location)]:
                yield earlier
            self.notes[_key(note.location)].append(note)
