"""A wasi:http handler in Python: CPython inside a component of ~18 MB.

The benchmark's large component: what a cold start (compiling all of CPython)
and a cached start (mapping it) cost. Built by `make bench` with
componentize-py against the WIT that wasmtime-wasi-http ships.
"""

from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)
from componentize_py_types import Ok


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        body_text = f"hello from python at {path}\n".encode()
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        stream = body.write()
        stream.blocking_write_and_flush(body_text)
        stream.__exit__(None, None, None)
        OutgoingBody.finish(body, None)
