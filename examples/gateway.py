"""A tiny video-generation gateway: `POST /v1/videos` would call PixVerse; the consent gate
stands in front of it.

    LEDGER_URL=http://127.0.0.1:8080 LEDGER_TOKEN=<a consent:check token> \\
        python -m examples.gateway --port 8090

Then `curl -X POST -H 'X-Device-Id: d-42' -H 'X-Region: eu' localhost:8090/v1/videos` answers
202 if d-42 allowed pixverse_sharing, else 451 (see examples/README.md).
"""

import argparse
import os
import uuid

from litestar import Litestar, post

from examples.pixverse_gate import ASGIApp, ConsentGate
from ledger.client import Mirror


@post("/v1/videos", status_code=202)
async def generate_video() -> dict[str, str]:
    """Where the app would send the image and prompt to PixVerse; here it only says so."""
    return {"job": str(uuid.uuid4()), "status": "queued with PixVerse"}


def create_gateway(mirror: Mirror, home_region: str = "eu") -> ASGIApp:
    """The gateway app behind the gate: plain ASGI around the whole Litestar app."""
    return ConsentGate(Litestar([generate_video]), mirror, home_region=home_region)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--home-region", default="eu")
    args = parser.parse_args()
    import uvicorn

    with Mirror(os.environ.get("LEDGER_URL", "http://127.0.0.1:8080"), token=os.environ["LEDGER_TOKEN"]) as mirror:
        uvicorn.run(create_gateway(mirror, args.home_region), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
