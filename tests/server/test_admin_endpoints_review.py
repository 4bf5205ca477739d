"""Review of the server's non-generation endpoints against vLLM's: the API key's Bearer scheme, /v1/models cards,
/reset_prefix_cache's query options, and which routes --enable-server-load-tracking counts.

The live checks use the shared ``server`` fixture (API key, served names ``tiny`` and ``tiny-alias``).
"""

from __future__ import annotations

import asyncio

import httpx
from server_utils import ALIAS, API_KEY, MODEL


# ---------------------------------------------------------------------------------------------- API key
def test_bearer_scheme_is_case_insensitive(server):
    """vLLM (and RFC 9110) read the scheme case-insensitively: ``bearer KEY`` is the key, not a 401."""
    for header in (f"bearer {API_KEY}", f"BEARER {API_KEY}", f"Bearer {API_KEY}", f"Bearer  {API_KEY}"):
        r = httpx.get(server.url + "/v1/models", headers={"Authorization": header}, timeout=30)
        assert r.status_code == 200, (header, r.text)
    for header in (f"Basic {API_KEY}", f"bearer {API_KEY}x", API_KEY, "bearer", f"Bearer{API_KEY}"):
        r = httpx.get(server.url + "/v1/models", headers={"Authorization": header}, timeout=30)
        assert r.status_code == 401, (header, r.text)
        assert r.json()["error"]["code"] == "invalid_api_key"


# ---------------------------------------------------------------------------------------------- /v1/models
def test_model_cards_have_vllms_permission_list(server):
    cards = server.get("/v1/models").json()["data"]
    assert [c["id"] for c in cards] == [MODEL, ALIAS]
    for card in cards:
        (perm,) = card["permission"]
        assert perm["object"] == "model_permission" and perm["id"].startswith("modelperm-")
        assert isinstance(perm["created"], int)
        assert {k: perm[k] for k in ("allow_create_engine", "allow_sampling", "allow_logprobs", "allow_search_indices",
                                     "allow_view", "allow_fine_tuning", "organization", "group", "is_blocking")} == {
            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False, "organization": "*",
            "group": None, "is_blocking": False}
    one = server.get(f"/v1/models/{ALIAS}").json()
    assert one["id"] == ALIAS and one["permission"][0]["object"] == "model_permission"
    # the OpenAI SDK reads the cards
    assert [m.id for m in server.client().models.list()] == [MODEL, ALIAS]
    r = server.get("/v1/models/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


# ---------------------------------------------------------------------------------------------- /reset_prefix_cache
def test_reset_prefix_cache_refuses_the_options_it_does_not_do(server):
    """vLLM's ``reset_running_requests`` / ``reset_external`` query options: false (the default) is what pagoda
    does; true is a 400 naming the option, not silently a plain reset."""
    for name in ("reset_running_requests", "reset_external"):
        r = server.post(f"/reset_prefix_cache?{name}=true", None)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == name and f"{name}=true is not supported" in err["message"]
        r = server.post(f"/reset_prefix_cache?{name}=false", None)
        assert r.status_code == 200 and r.json() == {"success": True}, r.text
    r = server.post("/reset_prefix_cache?reset_running_requests=maybe", None)
    assert r.status_code == 400 and "reset_running_requests" in r.text
    assert server.post("/reset_prefix_cache", None).json() == {"success": True}


# ---------------------------------------------------------------------------------------------- /load
def test_load_tracking_counts_the_pooling_routes():
    """vLLM counts its pooling routes (embeddings, pooling, classify, score, rerank) in ``server_load`` too; a
    pooling server's /load must not stay 0 under load. /tokenize and GET routes are not counted."""
    from pagoda.entrypoints.openai.middleware import ServerLoadMiddleware

    class Counter:
        server_load = 0

    seen: list[int] = []
    counter = Counter()

    async def app(scope, receive, send):
        seen.append(counter.server_load)

    mw = ServerLoadMiddleware(app, counter)
    counted = ("/v1/embeddings", "/pooling", "/classify", "/score", "/v1/score", "/rerank", "/v1/rerank",
               "/v2/rerank", "/v1/completions", "/v1/chat/completions", "/v1/responses", "/invocations")
    for path in counted:
        asyncio.run(mw({"type": "http", "method": "POST", "path": path}, None, None))
    for path in ("/tokenize", "/detokenize", "/reset_prefix_cache"):
        asyncio.run(mw({"type": "http", "method": "POST", "path": path}, None, None))
    asyncio.run(mw({"type": "http", "method": "GET", "path": "/v1/models"}, None, None))
    assert seen == [1] * len(counted) + [0] * 4 and counter.server_load == 0
