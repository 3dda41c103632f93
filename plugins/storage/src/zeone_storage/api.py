"""Local HTTP API: put/get run as jobs in the node (the CLI polls them for its progress bars)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse

from zeone.content import ContentId
from zeone_storage.service import Job, Storage, StorageError, parse_capability


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise StorageError("request body is not JSON") from None
    if not isinstance(body, dict):
        raise StorageError("request body must be a JSON object")
    return body


def routes(storage: Storage) -> list[tuple[str, Any, list[str]]]:
    async def put(request: Request) -> JSONResponse:
        try:
            body = await _body(request)
            path = body.get("path")
            if not isinstance(path, str) or not Path(path).is_absolute():
                raise StorageError("'path' must be an absolute path the node can read")
            if not await trio.to_thread.run_sync(Path(path).is_file):
                raise StorageError(f"{path} is not a readable regular file")
            encrypt = body.get("encrypt")
            if encrypt is not None and not isinstance(encrypt, bool):
                raise StorageError("'encrypt' must be true or false")

            async def work(job: Job) -> dict[str, Any]:
                job.total = (await trio.to_thread.run_sync(Path(path).stat)).st_size

                def progress(n: int) -> None:
                    job.done += n

                return await storage.put(Path(path), encrypt=encrypt, progress=progress)

            job = storage.start_job("put", work)
        except StorageError as exc:
            return _error(str(exc))
        return JSONResponse({"job": job.id})

    async def get(request: Request) -> JSONResponse:
        try:
            body = await _body(request)
            ident, output = body.get("id"), body.get("output")
            if not isinstance(ident, str):
                raise StorageError("'id' must be a file id")
            parse_capability(ident)
            if not isinstance(output, str) or not Path(output).is_absolute():
                raise StorageError("'output' must be an absolute path")
            if not await trio.to_thread.run_sync(Path(output).parent.is_dir):
                raise StorageError(f"directory {Path(output).parent} does not exist")

            async def work(job: Job) -> dict[str, Any]:
                def progress(n: int) -> None:
                    job.done += n

                def on_size(n: int) -> None:
                    job.total = n

                return await storage.get(ident, Path(output), progress=progress, on_size=on_size)

            job = storage.start_job("get", work)
        except StorageError as exc:
            return _error(str(exc))
        return JSONResponse({"job": job.id})

    async def job(request: Request) -> JSONResponse:
        found = storage.jobs.get(request.path_params["job"])
        if found is None:
            return _error("no such job", 404)
        return JSONResponse(found.as_dict())

    async def files(_request: Request) -> JSONResponse:
        rows = storage.ledger.files()
        for row in rows:
            row["cid"] = str(ContentId(row["cid"]))
        return JSONResponse({"files": rows})

    async def status(request: Request) -> JSONResponse:
        try:
            cid, _key = parse_capability(request.path_params["id"])
            return JSONResponse(await storage.health(cid))
        except StorageError as exc:
            return _error(str(exc), 404)

    async def audit(_request: Request) -> JSONResponse:
        async def work(_job: Job) -> dict[str, Any]:
            counts = await storage.audit_round()
            repaired = await storage.repair_all()
            return {"audit": counts, "repair": repaired}

        try:
            job = storage.start_job("audit", work)
        except StorageError as exc:
            return _error(str(exc), 503)
        return JSONResponse({"job": job.id})

    return [
        ("/storage/put", put, ["POST"]),
        ("/storage/get", get, ["POST"]),
        ("/storage/jobs/{job}", job, ["GET"]),
        ("/storage/files", files, ["GET"]),
        ("/storage/status/{id}", status, ["GET"]),
        ("/storage/audit", audit, ["POST"]),
    ]
