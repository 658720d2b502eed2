"""The `fastformer serve` command: start (or join) Ray, run the application, serve until SIGINT/SIGTERM."""
import os
import signal
import threading

import ray
from ray import serve

from fastformer.serving import ingress
from fastformer.serving.app import app, model_names


def serve_main(args) -> int:
    application = app(args.model_dirs or None, task=args.task, replicas=args.replicas,
                      max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
                      max_ongoing=args.max_ongoing, max_queued=args.max_queued, threads=args.threads,
                      max_inputs=args.max_inputs, max_new_tokens=args.max_new_tokens, quantize=args.quantize)
    if args.address:  # join a running cluster: its ingress and metrics ports were set by `ray start`
        ingress_name = "as the cluster's `ray start` environment sets"
        ray.init(address=args.address, logging_level="WARNING")
    else:  # a local Ray instance in this process, gone when the command ends; its processes inherit os.environ
        ingress_name = args.ingress  # checked by the CLI (fastformer.cli), which can name the flag
        for name, value in ingress.environment(ingress_name).items():
            os.environ.setdefault(name, value)
        ray.init(include_dashboard=False, logging_level="WARNING", _metrics_export_port=args.metrics_port)
    # EveryNode: an HTTP entry point on every node (a load balancer in front spreads clients over them);
    # HeadOnly: one entry point (needed when several Ray nodes share one machine and so one host:port).
    serve.start(http_options={"host": args.host, "port": args.port}, proxy_location=args.proxy_location)
    if ingress_name == "haproxy":
        ingress.json_error_page(ray.get_runtime_context().get_node_id())
    serve.run(application, name=args.name, route_prefix="/")
    names = model_names(args.model_dirs) if args.model_dirs else ["all-MiniLM-L6-v2"]
    where = f"http://{args.host}:{args.port}"
    metrics = "" if args.address else f"; Prometheus metrics on http://127.0.0.1:{args.metrics_port}/metrics"
    print(f"fastformer serve: {', '.join(names)} on {where} ({args.replicas} replica(s), ingress "
          f"{ingress_name}){metrics}; Ctrl-C stops", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.delete(args.name)
    if not args.address:
        serve.shutdown()
    ray.shutdown()
    return 0
