// Drives co-wechat-api (from npm, unmodified) against the gateway's
// WeChat-compatible endpoint, for tests/api/proxy_sdk.rs.
//
// Usage: node co_wechat_api_driver.js BASE_URL APPID SECRET SPEC_JSON
// SPEC_JSON: {"template_id", "granted", "refused", "data", "media_hex"}.
// Prints one JSON object: what each step answered, or its errcode.
//
// The one setting: `api.prefix`, the SDK's base of every cgi-bin call (its
// token fetch, the subscribe send and media included).
const API = require('co-wechat-api');

const [base, appid, secret, specJson] = process.argv.slice(2);
const spec = JSON.parse(specJson);
const api = new API(appid, secret);
api.prefix = base.replace(/\/$/, '') + '/cgi-bin/';

async function step(run) {
  try {
    return { ok: true, result: await run() };
  } catch (error) {
    return { ok: false, errcode: error.code === undefined ? null : error.code, errmsg: String(error.message) };
  }
}

(async () => {
  const out = {};
  out.token = await step(async () => (await api.ensureAccessToken()).accessToken);
  out.sent = await step(async () => {
    const answer = await api.sendSubscribeMessage(spec.granted, spec.template_id, undefined, spec.data);
    return { errcode: answer.errcode, msgid: String(answer.msgid) };
  });
  out.refused = await step(() => api.sendSubscribeMessage(spec.refused, spec.template_id, undefined, spec.data));
  out.uploaded = await step(() => api.uploadMedia(Buffer.from(spec.media_hex, 'hex'), 'image', 'p.png', 'image/png'));
  console.log(JSON.stringify(out));
})();
