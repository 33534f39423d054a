// The page tests/test_browser.py opens in headless Chromium. It calls protobind's http:// port
// (another origin: the page is served by a static server) with the browser clients from npm and
// leaves what each call saw in `window.__results`, which the test reads and checks.
//
// Query string: `api` (the server's base URL) and `suite`:
//   connect          @connectrpc/connect-web, Connect protocol (JSON, binary, and GET for Lookup)
//   connect-grpc-web @connectrpc/connect-web's gRPC-Web transport (+proto and +json)
//   grpc-web         the `grpc-web` runtime (GrpcWebClientBase), formats "binary" and "text"

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { GrpcWebClientBase, MethodDescriptor, MethodType, RpcError } from "grpc-web";

import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb";
import { StatusSchema } from "./gen/google/rpc/status_pb";
import {
  ConformanceService,
  type Request,
  RequestSchema,
  type Response,
  ResponseSchema,
} from "./gen/protobind/conformance/v1/conformance_pb";

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

declare global {
  interface Window {
    __results?: Json;
  }
}

const SERVICE = "protobind.conformance.v1.ConformanceService";
const params = new URLSearchParams(location.search);
const api = params.get("api") ?? "";
const suite = params.get("suite") ?? "";

// The calls every client makes, as requests to the conformance service.
const unaryRequest = () => create(RequestSchema, { text: "héllo", number: 42n });
const streamRequest = () => create(RequestSchema, { text: "s", behavior: { streamCount: 3 } });
const errorRequest = () =>
  create(RequestSchema, {
    text: "x",
    behavior: { errorCode: Code.NotFound, errorMessage: "gone é", errorDetailReason: "R-browser" },
  });
// Two messages, then a failure with details: the status travels at the end of the stream.
const streamErrorRequest = () =>
  create(RequestSchema, {
    text: "e",
    behavior: {
      streamCount: 5,
      errorAfter: 2,
      errorCode: Code.ResourceExhausted,
      errorMessage: "stop",
      errorDetailReason: "R-stream",
    },
  });

function seen(response: Response): Json {
  return {
    text: response.text,
    index: response.index,
    number: response.number.toString(),
    transport: response.transport,
    method: response.method,
    app: response.metadata["x-app"] ?? null,
    // the client library's own x-user-agent header, when it sends one
    agent: response.metadata["x-user-agent"] ?? null,
  };
}

async function attempt(run: () => Promise<Json>): Promise<Json> {
  try {
    return await run();
  } catch (error) {
    return { unexpected: String(error) };
  }
}

// --- @connectrpc/connect-web -------------------------------------------------------------------

function connectError(error: unknown, streamed: Json[] = []): Json {
  const failure = ConnectError.from(error);
  return {
    code: failure.code,
    message: failure.rawMessage,
    reasons: failure.findDetails(ErrorInfoSchema).map((info) => info.reason),
    streamed,
  };
}

async function connectSuite(transport: Transport): Promise<Json> {
  const client = createClient(ConformanceService, transport);
  const headers = { "x-app": "browser" };
  return {
    unary: await attempt(async () => seen(await client.unary(unaryRequest(), { headers }))),
    lookup: await attempt(async () => seen(await client.lookup(unaryRequest(), { headers }))),
    stream: await attempt(async () => {
      const out: Json[] = [];
      for await (const response of client.serverStream(streamRequest(), { headers })) out.push(seen(response));
      return out;
    }),
    error: await attempt(async () => {
      try {
        await client.unary(errorRequest());
        return "no error";
      } catch (error) {
        return connectError(error);
      }
    }),
    streamError: await attempt(async () => {
      const out: Json[] = [];
      try {
        for await (const response of client.serverStream(streamErrorRequest())) out.push(seen(response));
        return "no error";
      } catch (error) {
        return connectError(error, out);
      }
    }),
  };
}

// --- the grpc-web runtime ----------------------------------------------------------------------
// protoc-gen-grpc-web is not published on npm (only wrappers that download it from GitHub), so the
// method descriptors its generated code would hold are written here, with protobuf-es serializers.

class RequestType {}
class ResponseType {}

function descriptor(name: string, type: string): MethodDescriptor<Request, Response> {
  return new MethodDescriptor<Request, Response>(
    `/${SERVICE}/${name}`,
    type,
    RequestType as never,
    ResponseType as never,
    (request: Request) => toBinary(RequestSchema, request),
    (bytes: Uint8Array) => fromBinary(ResponseSchema, bytes),
  );
}

const unaryMethod = descriptor("Unary", MethodType.UNARY);
const streamMethod = descriptor("ServerStream", MethodType.SERVER_STREAMING);

function base64Bytes(text: string): Uint8Array {
  // -bin metadata is base64, possibly without padding
  const padded = text + "=".repeat((4 - (text.length % 4)) % 4);
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

function grpcWebError(error: RpcError, streamed: Json[] = []): Json {
  const metadata = error.metadata ?? {};
  const details = metadata["grpc-status-details-bin"];
  const reasons: Json[] = [];
  if (details !== undefined) {
    const status = fromBinary(StatusSchema, base64Bytes(details));
    for (const detail of status.details) {
      const info = anyUnpack(detail, ErrorInfoSchema);
      if (info !== undefined) reasons.push(info.reason);
    }
  }
  return { code: error.code, message: error.message, reasons, streamed };
}

function readStream(
  client: GrpcWebClientBase,
  request: Request,
  metadata: Record<string, string>,
): Promise<{ out: Json[]; error?: RpcError }> {
  return new Promise((resolve) => {
    const out: Json[] = [];
    const stream = client.serverStreaming(`${api}/${SERVICE}/ServerStream`, request, metadata, streamMethod);
    stream.on("data", (response) => out.push(seen(response)));
    stream.on("error", (error) => resolve({ out, error }));
    stream.on("end", () => resolve({ out }));
  });
}

async function grpcWebSuite(format: string): Promise<Json> {
  const client = new GrpcWebClientBase({ format });
  const metadata = { "x-app": "browser" };
  return {
    unary: await attempt(async () =>
      seen(await client.unaryCall(`${api}/${SERVICE}/Unary`, unaryRequest(), metadata, unaryMethod)),
    ),
    stream: await attempt(async () => {
      const { out, error } = await readStream(client, streamRequest(), metadata);
      return error === undefined ? out : { unexpected: `${error.code} ${error.message}`, streamed: out };
    }),
    error: await attempt(async () => {
      try {
        await client.unaryCall(`${api}/${SERVICE}/Unary`, errorRequest(), {}, unaryMethod);
        return "no error";
      } catch (error) {
        return grpcWebError(error as RpcError);
      }
    }),
    streamError: await attempt(async () => {
      const { out, error } = await readStream(client, streamErrorRequest(), {});
      return error === undefined ? "no error" : grpcWebError(error, out);
    }),
  };
}

async function main(): Promise<Json> {
  switch (suite) {
    case "connect":
      return {
        json: await connectSuite(createConnectTransport({ baseUrl: api, useHttpGet: true })),
        binary: await connectSuite(
          createConnectTransport({ baseUrl: api, useBinaryFormat: true, useHttpGet: true }),
        ),
      };
    case "connect-grpc-web":
      return {
        proto: await connectSuite(createGrpcWebTransport({ baseUrl: api, useBinaryFormat: true })),
        json: await connectSuite(createGrpcWebTransport({ baseUrl: api, useBinaryFormat: false })),
      };
    case "grpc-web":
      return { binary: await grpcWebSuite("binary"), text: await grpcWebSuite("text") };
    default:
      return { unexpected: `unknown suite ${suite}` };
  }
}

main().then(
  (results) => {
    window.__results = results;
  },
  (error) => {
    window.__results = { unexpected: String(error) };
  },
);
