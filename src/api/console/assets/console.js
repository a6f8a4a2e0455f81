// The operator console. Reads the gateway's admin JSON endpoints with the key
// the operator typed (kept in this tab's sessionStorage, sent as a Bearer
// header; never a cookie). Every value from the server enters the page as
// text (textContent, createTextNode, setAttribute of plain attributes),
// never as markup.
'use strict';

(function () {
  const KEY = 'formid-gateway.admin-key';
  const SVG = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);
  let appid = null;
  let search = {};
  let nextBefore = null;

  /** An element with attributes and children (strings become text nodes). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function when(iso) {
    if (!iso) return '–';
    const date = new Date(iso);
    return isNaN(date) ? String(iso) : date.toLocaleString();
  }

  function showError(message) {
    const box = $('error');
    box.textContent = message;
    box.hidden = !message;
  }

  class Refused extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** GET a JSON route with the key; a refusal becomes a `Refused`. */
  async function api(path) {
    const key = sessionStorage.getItem(KEY) || '';
    let response;
    try {
      response = await fetch(path, {
        headers: { Authorization: 'Bearer ' + key, Accept: 'application/json' },
        cache: 'no-store',
        credentials: 'omit',
      });
    } catch (error) {
      throw new Refused(0, 'The gateway cannot be reached: ' + error.message);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const detail = body && body.error
        ? body.error.code + ': ' + body.error.message
        : 'HTTP ' + response.status;
      throw new Refused(response.status, detail);
    }
    return body;
  }

  function appPath(suffix) {
    return '/v1/admin/apps/' + encodeURIComponent(appid) + suffix;
  }

  async function signIn(key) {
    sessionStorage.setItem(KEY, key);
    let list;
    try {
      list = await api('/v1/admin/apps');
    } catch (error) {
      sessionStorage.removeItem(KEY);
      $('console').hidden = true;
      $('session').hidden = true;
      $('login').hidden = false;
      showError(error.status === 401 || error.status === 403
        ? 'The key was refused (' + error.message + ').'
        : error.message);
      return;
    }
    showError('');
    $('login').hidden = true;
    $('session').hidden = false;
    $('console').hidden = false;
    const select = clear($('app'));
    for (const app of list.apps) select.append(el('option', { value: app.appid }, app.appid));
    if (list.apps.length === 0) {
      showError('This key is allowed no app.');
      return;
    }
    appid = list.apps[0].appid;
    select.value = appid;
    await loadApp();
  }

  function signOut() {
    sessionStorage.removeItem(KEY);
    appid = null;
    $('key').value = '';
    $('console').hidden = true;
    $('session').hidden = true;
    $('login').hidden = false;
    showError('');
  }

  /** Runs one section's load; its failure is shown, the others go on. */
  async function section(name, load) {
    try {
      await load();
    } catch (error) {
      showError(name + ': ' + error.message);
    }
  }

  async function loadApp() {
    showError('');
    await Promise.all([
      section('Reach', loadOverview),
      section('Token', loadToken),
      section('Failures', loadFailures),
      section('Messages', () => loadMessages(false)),
      section('Templates', loadTemplates),
      section('API keys', loadKeys),
    ]);
  }

  function rows(tbody, items, cells, emptyText, columns) {
    clear(tbody);
    if (items.length === 0) {
      tbody.append(el('tr', {}, el('td', { class: 'empty', colspan: String(columns) }, emptyText)));
      return;
    }
    for (const item of items) tbody.append(el('tr', {}, ...cells(item).map((cell) => el('td', {}, cell))));
  }

  async function loadOverview() {
    const overview = await api(appPath('/overview'));
    $('users-reachable').textContent = String(overview.users_reachable);
    $('expiring').textContent = String(overview.expiring_24h.credentials + overview.expiring_24h.grants);
    $('refreshed').textContent = 'as of ' + when(overview.refreshed_at);
    rows($('kinds').tBodies[0], overview.credentials,
      (k) => [k.kind, k.credentials, k.sends, k.users, k.expiring_24h], 'None', 5);
    rows($('grants').tBodies[0], overview.templates,
      (t) => [el('span', { class: 'mono' }, t.template_id), t.grants, t.users_reachable,
        t.long_term_subscribers, t.expiring_24h], 'No subscribe template reaches anyone', 5);
  }

  async function loadToken() {
    const token = await api(appPath('/token'));
    const list = clear($('token-status'));
    const entry = (term, value) => list.append(el('dt', {}, term), el('dd', {}, value));
    entry('Token', token.has_token ? 'stored (never shown here)' : 'none yet');
    entry('Expires in', token.expires_in === null ? '–' : formatSeconds(token.expires_in));
    entry('Expires at', when(token.expires_at));
    entry('Last refresh', when(token.refreshed_at));
    entry('Last check', when(token.checked_at));
    entry('Refresh lease', token.refresh_lease
      ? token.refresh_lease.holder + ' until ' + when(token.refresh_lease.until)
      : 'not held');
  }

  function formatSeconds(seconds) {
    if (seconds < 0) return 'expired ' + formatSeconds(-seconds) + ' ago';
    const h = Math.floor(seconds / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    return (h ? h + ' h ' : '') + m + ' min';
  }

  async function loadFailures() {
    const failures = await api(appPath('/failures'));
    drawChart(failures.hours);
    rows($('failure-codes').tBodies[0], failures.by_code,
      (f) => [f.error_code && f.wechat_errcode !== undefined ? f.code + ' (' + f.error_code + ')' : f.code,
        f.messages], 'No failures in the last 24 h', 2);
  }

  /** One bar per hour, its height the failed messages of that hour. */
  function drawChart(hours) {
    const width = 480;
    const height = 160;
    const top = 14;
    const bottom = 20;
    const most = Math.max(1, ...hours.map((hour) => hour.total));
    const step = width / hours.length;
    const chart = svg('svg', {
      viewBox: '0 0 ' + width + ' ' + height, role: 'img',
      'aria-label': 'Failed messages per hour over the last 24 hours',
    });
    chart.append(svg('line', { class: 'axis', x1: 0, y1: height - bottom, x2: width, y2: height - bottom }));
    hours.forEach((hour, index) => {
      const barHeight = ((height - top - bottom) * hour.total) / most;
      const bar = svg('rect', {
        class: 'bar-rect',
        x: (index * step + 1).toFixed(1),
        y: (height - bottom - barHeight).toFixed(1),
        width: Math.max(1, step - 2).toFixed(1),
        height: barHeight.toFixed(1),
        'data-total': hour.total,
      });
      const codes = hour.failures.map((f) => f.code + ': ' + f.messages).join(', ');
      bar.append(svg('title', {}, when(hour.start) + ' — ' + hour.total + ' failed' + (codes ? ' (' + codes + ')' : '')));
      chart.append(bar);
      if (index % 6 === 0) {
        const label = new Date(hour.start);
        chart.append(svg('text', { x: index * step + 1, y: height - 6 },
          isNaN(label) ? '' : label.getHours() + ':00'));
      }
    });
    chart.append(svg('text', { x: 2, y: 10 }, 'max ' + most + '/h'));
    clear($('chart')).append(chart);
  }

  function messageItem(message) {
    const head = el('div', { class: 'head' },
      el('span', { class: 'status ' + message.status }, message.status),
      el('span', { class: 'mono message-id' }, message.id));
    const meta = el('div', { class: 'meta' },
      'to ', el('span', { class: 'mono' }, message.touser),
      ' · ', el('span', { class: 'mono' }, message.template_id),
      ' · ', message.channel, ' · ', when(message.created_at));
    const item = el('li', { class: 'message', 'data-id': message.id }, head, meta);
    if (message.error) {
      item.append(el('div', { class: 'meta' }, 'error ', message.error.code,
        message.error.wechat_errcode !== undefined ? ' (errcode ' + message.error.wechat_errcode + ')' : ''));
    }
    if (message.delivery) {
      item.append(el('div', { class: 'meta' }, 'delivery: errcode ', message.delivery.error_code,
        message.delivery.error_status ? ' ' + message.delivery.error_status : '', ' at ', when(message.delivery.at)));
    }
    const attempts = el('ol', { class: 'attempts' });
    for (const attempt of message.attempts) {
      attempts.append(el('li', { class: 'attempt' }, attempt.outcome,
        attempt.errcode !== null && attempt.errcode !== undefined ? ' · errcode ' + attempt.errcode : '',
        attempt.credential_kind ? ' · ' + attempt.credential_kind : '',
        ' · ', when(attempt.at)));
    }
    if (message.attempts.length === 0) attempts.append(el('li', {}, 'no attempt yet'));
    item.append(attempts);
    return item;
  }

  async function loadMessages(more) {
    const query = new URLSearchParams();
    if (search.openid) query.set('openid', search.openid);
    if (search.message_id) query.set('message_id', search.message_id);
    if (more && nextBefore) query.set('before', nextBefore);
    const text = query.toString();
    const page = await api(appPath('/messages') + (text ? '?' + text : ''));
    const list = $('message-list');
    if (!more) clear(list);
    for (const message of page.messages) list.append(messageItem(message));
    if (!more && page.messages.length === 0) list.append(el('li', { class: 'message empty' }, 'No message found'));
    nextBefore = page.next_before || null;
    $('more').hidden = !nextBefore;
    await loadUser();
  }

  /** The searched user's quota (their credentials and grants), if any. */
  async function loadUser() {
    const box = $('user');
    clear(box);
    box.hidden = !search.openid;
    if (!search.openid) return;
    const quota = await api('/v1/apps/' + encodeURIComponent(appid) + '/users/' +
      encodeURIComponent(search.openid) + '/quota');
    box.append(el('strong', {}, 'User '), el('span', { class: 'mono', id: 'user-openid' }, quota.openid),
      el('div', {}, 'sends available: ', el('span', { id: 'user-sends' }, quota.sends_available),
        ' · next expiry ', when(quota.next_expiry)));
    for (const [kind, count] of Object.entries(quota.by_kind)) {
      box.append(el('div', {}, kind + ': ' + count.credentials + ' credentials, ' + count.sends + ' sends'));
    }
    for (const sub of quota.subscriptions) {
      box.append(el('div', {}, el('span', { class: 'mono' }, sub.template_id), ': ', sub.decision,
        ', ' + sub.one_time_grants + ' grants', sub.long_term ? ', long-term' : ''));
    }
  }

  async function loadTemplates() {
    const list = await api('/v1/apps/' + encodeURIComponent(appid) + '/templates');
    rows($('template-list').tBodies[0], list.templates,
      (t) => [t.channel, t.title, el('span', { class: 'mono' }, t.id), t.type], 'No template stored (refresh them through the API)', 4);
  }

  async function loadKeys() {
    const list = await api('/v1/admin/keys');
    rows($('key-list').tBodies[0], list.keys,
      (k) => [k.name, k.scopes.join(', '), k.apps.join(', '), when(k.last_used_at), k.revoked_at ? 'revoked' : 'live'],
      'No stored key (keys from the configuration file are not listed)', 5);
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', (event) => {
      event.preventDefault();
      signIn($('key').value.trim());
    });
    $('sign-out').addEventListener('click', signOut);
    $('reload').addEventListener('click', loadApp);
    $('app').addEventListener('change', (event) => {
      appid = event.target.value;
      search = {};
      $('search').reset();
      loadApp();
    });
    $('search').addEventListener('submit', (event) => {
      event.preventDefault();
      search = {
        openid: $('search-openid').value.trim(),
        message_id: $('search-id').value.trim(),
      };
      section('Messages', () => loadMessages(false));
    });
    $('search-clear').addEventListener('click', () => {
      $('search').reset();
      search = {};
      section('Messages', () => loadMessages(false));
    });
    $('more').addEventListener('click', () => section('Messages', () => loadMessages(true)));
    const key = sessionStorage.getItem(KEY);
    if (key) signIn(key);
  });
})();
