"""``pagoda router``: an OpenAI-compatible HTTP router in front of several ``pagoda serve`` (or vLLM) replicas.

Modules, one idea each:

* :mod:`backends` — a replica's state (health, served models, load) and the pool of replicas;
* :mod:`discovery` — where the replica list comes from: ``--backend``, ``--backends-file``, a Kubernetes
  service's EndpointSlices;
* :mod:`health` — the periodic ``/health`` + ``/v1/models`` + ``/metrics`` probe of every replica;
* :mod:`policies` — ``--routing-logic``: roundrobin, leastloaded, session, prefixaware;
* :mod:`proxy` — forwarding one request: retries before the first byte, streaming pass-through after it;
* :mod:`metrics` — the router's own Prometheus metrics;
* :mod:`app` — the ASGI app (routes, API key, body cap) and its background tasks;
* :mod:`cli_args` — the flags and ``run_router``.
"""
