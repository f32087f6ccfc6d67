"""uvicorn's httptools protocol, except that a request it cannot parse gets the contract's error.

uvicorn answers an unparsable request (a garbage request line, `Content-Length: abc`, a raw
control byte in the path...) itself, before any ASGI app sees it, with a text/plain 400. The
contract wants every error in one JSON shape, so this subclass replaces only that answer.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import InvalidRequest, encode_error

_BODY = encode_error(InvalidRequest("the HTTP request is malformed and could not be parsed"))


class ContractHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        content = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(_BODY),
                        b"connection: close\r\n", b"\r\n", _BODY])
        self.transport.write(b"".join(content))
        self.transport.close()
