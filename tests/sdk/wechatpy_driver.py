"""Drives wechatpy (from PyPI, unmodified) against the gateway's
WeChat-compatible endpoint, for tests/api/proxy_sdk.rs.

Usage: wechatpy_driver.py BASE_URL APPID SECRET

Reads one JSON command per line on stdin and answers one JSON line per
command on stdout:
  {"op": "token"}                          -> {"ok": true, "result": "<token>"}
  {"op": "templates"}                      -> WeChat's gettemplate answer
  {"op": "subscribe", "touser", "template_id", "data"}
  {"op": "upload", "hex": "..."}           -> media/upload's answer
  {"op": "download", "media_id": "..."}    -> {"hex": "..."}
  {"op": "clock", "now_ms": N}             -> the SDK's clock follows the test's
  {"op": "stats"}                          -> what the SDK saw
A WeChat error is {"ok": false, "errcode": N, "errmsg": "..."}.

wechatpy 1.8.18 takes its host from `API_BASE_URL` for cgi-bin calls, but
its token fetch and its wxa calls name https://api.weixin.qq.com themselves:
the session below points every one of them at BASE_URL (the README shows the
same few lines). The rest is instrumentation: the SDK's clock follows the
test's manual clock, and every errcode it meets is counted.
"""

import io
import json
import sys
import time

import requests
import wechatpy.client.base as wechatpy_base
from wechatpy import WeChatClient
from wechatpy.client.api import WeChatWxa
from wechatpy.exceptions import WeChatClientException

WECHAT = "https://api.weixin.qq.com"
BASE, APPID, SECRET = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]


class GatewaySession(requests.Session):
    """Sends what wechatpy addresses to api.weixin.qq.com to the gateway."""

    def request(self, method, url, *args, **kwargs):
        if url.startswith(WECHAT):
            url = BASE + url[len(WECHAT):]
        return super().request(method, url, *args, **kwargs)


class TestClock:
    """The test's manual clock, as wechatpy reads it (time.time())."""

    offset = 0.0

    def time(self):
        return time.time() + self.offset


CLOCK = TestClock()
wechatpy_base.time = CLOCK

SEEN = {"errcodes": [], "token_fetches": 0}


class CountingClient(WeChatClient):
    API_BASE_URL = BASE + "/cgi-bin/"

    def fetch_access_token(self):
        SEEN["token_fetches"] += 1
        return super().fetch_access_token()

    def _handle_result(self, res, method=None, url=None, result_processor=None, **kwargs):
        try:
            body = res.json() if not isinstance(res, dict) else res
            if isinstance(body, dict) and body.get("errcode"):
                SEEN["errcodes"].append(int(body["errcode"]))
        except ValueError:
            pass
        return super()._handle_result(res, method, url, result_processor, **kwargs)


WeChatWxa.API_BASE_URL = BASE + "/"
client = CountingClient(APPID, SECRET)
client._http = GatewaySession()


def run(command):
    op = command["op"]
    if op == "token":
        return client.access_token
    if op == "templates":
        return client.get("wxaapi/newtmpl/gettemplate", api_base_url=BASE + "/")
    if op == "subscribe":
        return client.wxa.send_subscribe_message(
            command["touser"], command["template_id"], command["data"]
        )
    if op == "upload":
        media = io.BytesIO(bytes.fromhex(command["hex"]))
        media.name = "pixel.png"
        return client.media.upload("image", media)
    if op == "download":
        response = client.media.download(command["media_id"])
        return {"hex": response.content.hex(), "content_type": response.headers.get("content-type")}
    if op == "clock":
        CLOCK.offset = command["now_ms"] / 1000.0 - time.time()
        return None
    if op == "stats":
        return SEEN
    raise ValueError("unknown op " + op)


for line in sys.stdin:
    if not line.strip():
        continue
    try:
        answer = {"ok": True, "result": run(json.loads(line))}
    except WeChatClientException as error:
        answer = {"ok": False, "errcode": error.errcode, "errmsg": error.errmsg}
    except Exception as error:  # noqa: BLE001 - reported to the test
        answer = {"ok": False, "errcode": None, "errmsg": repr(error)}
    print(json.dumps(answer), flush=True)
