"""Entry point of a node agent process: ``python -m nebula.node_main`` (config from the env).

The parent passes a JSON config in NEBULA_NODE_CONFIG and the token in NEBULA_TOKEN; the
agent writes ``ready`` into the session directory once it accepts connections.
"""
from __future__ import annotations

import json
import os
import signal
import sys

from .node_launch import detect_resources, start_early_workers, start_huge_page_file


def main() -> None:
    config = json.loads(os.environ.pop("NEBULA_NODE_CONFIG"))
    token = os.environ.pop("NEBULA_TOKEN").encode()
    session_dir = config["session_dir"]
    # First the socket and the first worker (node_launch.py), then our own imports while it starts.
    listener, prestarted = start_early_workers(config, token)
    detect_resources(config)
    huge_pages = start_huge_page_file(config)
    import logging
    from .child_process import install_parent_watch
    from .log_files import configure_process_logging
    from .node import NodeAgent
    configure_process_logging(session_dir, "node", config.get("logging_level", logging.INFO))
    agent = NodeAgent(session_dir, token, config["resources"], config["store_capacity"], config=config,
                      listener=listener, prestarted=prestarted, huge_pages=huge_pages)
    install_parent_watch(on_parent_exit=agent.stop_workers)
    signal.signal(signal.SIGTERM, lambda *_: _stop(agent))
    import asyncio
    try:
        asyncio.run(_serve(agent, session_dir))
    finally:
        agent.stop_workers()


async def _serve(agent, session_dir: str) -> None:
    import asyncio
    task = asyncio.get_running_loop().create_task(agent.serve())
    delay = 0.0  # serve() gets ready in its first step, unless it joins a cluster first
    while not getattr(agent, "_ready", False):
        await asyncio.sleep(delay)
        delay = 0.005
    tcp = agent.cluster.tcp_address if agent.cluster is not None else ""
    with open(os.path.join(session_dir, "ready"), "w") as f:
        f.write(f"{agent.address}\n{tcp}\n")
    await task


def _stop(agent) -> None:
    agent.stop_workers()
    sys.exit(0)


if __name__ == "__main__":
    main()
