"""Listen to a stream: write every dialogue on it as a transcript plus wav files.

    python -m antiphon.dump --data-dir runs/<exp>/<time>/valkey --namespace tiny_cpu --out dialogues/
    python -m antiphon.dump --url redis://host:6379/0 --namespace my_run --out dialogues/   # password: env/file

Reads without consuming (XRANGE), so it never disturbs the consumer groups of a live run. With
``--data-dir`` it starts an embedded Valkey on a stopped run's persisted data (AOF) first.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from antiphon.dialogue_files import write_dialogue
from antiphon.protocol import ProtocolError, decode

if TYPE_CHECKING:
    from antiphon.transport import Transport


async def dump(transport: Transport, out_dir: Path, kind: str = "trajectories", limit: int = 0,
               tokenizer=None) -> dict:
    stream = transport.stream(kind)
    written, bad, after = 0, 0, "-"
    while True:
        entries = await transport.scan(stream, after=after, count=100)
        if not entries:
            break
        for msg_id, payload in entries:
            after = msg_id
            try:
                traj = decode(payload)
            except ProtocolError as e:
                bad += 1
                print(f"skipping {msg_id}: {e}", file=sys.stderr)
                continue
            write_dialogue(traj, out_dir, tokenizer)
            written += 1
            if limit and written >= limit:
                return {"stream": stream, "written": written, "undecodable": bad}
    return {"stream": stream, "written": written, "undecodable": bad}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="redis:// or rediss:// URL (password from --password-env / --password-file)")
    src.add_argument("--data-dir", help="a stopped run's embedded Valkey data folder (<run dir>/valkey)")
    ap.add_argument("--namespace", required=True, help="the run's transport.namespace (default: experiment name)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--kind", default="trajectories", help="stream kind: trajectories | scored | dead")
    ap.add_argument("--limit", type=int, default=0, help="stop after this many dialogues (0: all)")
    ap.add_argument("--password-env", default="ANTIPHON_REDIS_PASSWORD")
    ap.add_argument("--password-file")
    a = ap.parse_args(argv)

    from antiphon.transport import EmbeddedValkey, from_config

    with contextlib.ExitStack() as stack:
        url = a.url
        if a.data_dir:
            if not (Path(a.data_dir).is_dir()):
                ap.error(f"--data-dir {a.data_dir!r}: no such folder")
            url = stack.enter_context(EmbeddedValkey(a.data_dir)).url
        transport = from_config({"url": url, "namespace": a.namespace, "password_env": a.password_env,
                                 "password_file": a.password_file})
        res = asyncio.run(_dump_and_close(transport, Path(a.out), a.kind, a.limit))
    print(f"{res['written']} dialogues from {res['stream']} written to {a.out}"
          + (f" ({res['undecodable']} undecodable skipped)" if res["undecodable"] else ""))


async def _dump_and_close(transport: Transport, out_dir: Path, kind: str, limit: int) -> dict:
    async with transport:
        return await dump(transport, out_dir, kind, limit)


if __name__ == "__main__":
    main()
