"""Entry point of a worker process: ``python -m nebula.worker_main`` (started by a node agent)."""
from __future__ import annotations

import os


def main() -> None:
    from .child_process import install_parent_watch
    install_parent_watch()
    worker_id = os.environ.pop("NEBULA_WORKER_ID")
    session_dir = os.environ["NEBULA_SESSION_DIR"]
    from .log_files import configure_process_logging
    configure_process_logging(session_dir, f"worker-{worker_id}")
    from .output_capture import OutputCapture
    capture = OutputCapture(os.path.join(session_dir, "logs", f"worker-{worker_id}.out"))
    _serve(worker_id, session_dir, capture)


def _serve(worker_id: str, session_dir: str, capture) -> None:
    from .session import set_current_session
    from .worker import Worker, bind_listener, bind_tcp_listener
    token = os.environ.pop("NEBULA_TOKEN").encode()
    address = f"unix:{os.path.join(session_dir, f'w-{worker_id}.sock')}"
    listener = bind_listener(address)
    tcp_listener, tcp_address = None, ""
    if os.environ.get("NEBULA_TCP_HOST"):
        tcp_listener, tcp_address = bind_tcp_listener(os.environ.pop("NEBULA_TCP_HOST"))
    session = _connect(os.environ["NEBULA_NODE_ADDRESS"], token, worker_id, tcp_address)
    env_bytes = bytes.fromhex(os.environ.pop("NEBULA_WORKER_ENV", ""))
    if env_bytes:
        import pickle
        session.inherited_env = pickle.loads(env_bytes)
    set_current_session(session)
    worker = Worker(session, worker_id, address, capture)
    worker.serve_links(listener)
    if tcp_listener is not None:
        worker.serve_links(tcp_listener)
    worker.run_forever()


def _connect(node_address: str, token: bytes, worker_id: str, tcp_address: str):
    from .session import Session
    return Session(node_address, token, kind="worker", worker_id=worker_id, tcp_address=tcp_address)


if __name__ == "__main__":
    import sys
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(1)
