//! Builds the whole service from settings: storage, WeChat client, token
//! keeper, send path, HTTP server and workers, all under one shutdown signal.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};
use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::api::auth::ApiKeys;
use crate::api::{self, request_id, ApiContext};
use crate::broadcasts::{BroadcastParts, BroadcastWorker, Broadcasts};
use crate::clock::{ms, SharedClock};
use crate::config::{AppSettings, Settings};
use crate::monitoring::{self, Backlog};
use crate::proxy::{self, ProxyContext, Upstream};
use crate::push::PushKeys;
use crate::sending::{SendSettings, Sender, SenderParts};
use crate::stats::Stats;
use crate::storage::{self, Storage};
use crate::templates::Catalogue;
use crate::tokens::TokenKeeper;
use crate::webhooks::{TargetRule, WebhookDelivery, Webhooks};
use crate::wechat::breaker::Breakers;
use crate::wechat::{SharedWeChat, WeChatClient};
use crate::workers::{
    run_every, Recovery, ScheduledSender, Sweeper, TokenRefresher, WaitingSender,
};

/// A built, not yet running, gateway.
pub struct Application {
    port: u16,
    server: Server,
    /// The WeChat-compatible endpoint, when `proxy.listen` is set.
    proxy: Option<(u16, Server)>,
    /// `/metrics`, when `metrics.listen` is set, and the worker of its
    /// message gauges.
    metrics: Option<(u16, Server, Backlog)>,
    shutdown: CancellationToken,
    storage: Arc<dyn Storage>,
    token_refresher: TokenRefresher,
    sweeper: Sweeper,
    waiting: WaitingSender,
    scheduled: ScheduledSender,
    recovery: Recovery,
    broadcast_worker: BroadcastWorker,
    catalogue: Catalogue,
    token_interval: Duration,
    sweep_interval: Duration,
    waiting_interval: Duration,
    recovery_interval: Duration,
    delivery: WebhookDelivery,
    delivery_interval: Duration,
    stats: Stats,
    stats_interval: Duration,
}

/// What the routes and the workers share: the ledger, the WeChat client
/// behind the token keeper, the catalogue, the send path and the sessions.
#[derive(Clone)]
struct Shared {
    storage: Arc<dyn Storage>,
    apps: Arc<BTreeMap<String, AppSettings>>,
    tokens: TokenKeeper,
    catalogue: Catalogue,
    sender: Sender,
    sessions: crate::sessions::Sessions,
    clock: SharedClock,
}

impl Shared {
    /// Connects and migrates the ledger and builds what stands on it.
    async fn connect(settings: &Settings, clock: &SharedClock) -> anyhow::Result<Self> {
        let storage = connect_storage(settings).await?;
        let wechat = wechat_client(settings)?;
        let apps = Arc::new(settings.apps.clone());
        let tokens = TokenKeeper::new(
            storage.clone(),
            wechat.clone(),
            apps.clone(),
            clock.clone(),
            token_holder(settings),
            settings.tokens.clone(),
        );
        let catalogue = Catalogue::new(
            storage.clone(),
            tokens.clone(),
            wechat.clone(),
            clock.clone(),
        );
        let sessions = crate::sessions::Sessions::new(crate::sessions::SessionParts {
            storage: storage.clone(),
            wechat: wechat.clone(),
            apps: apps.clone(),
            clock: clock.clone(),
            ttl: settings.sessions.ttl,
        });
        let sender = sender(
            settings, &storage, &tokens, wechat, &catalogue, &apps, clock,
        );
        Ok(Self {
            storage,
            apps,
            tokens,
            catalogue,
            sender,
            sessions,
            clock: clock.clone(),
        })
    }
}

/// What every handler shares.
fn api_context(
    settings: &Settings,
    shared: Shared,
    broadcasts: Broadcasts,
    rule: TargetRule,
    stats: Stats,
) -> anyhow::Result<web::Data<ApiContext>> {
    let Shared {
        storage,
        apps,
        tokens,
        catalogue,
        sender,
        sessions,
        clock,
    } = shared;
    Ok(web::Data::new(ApiContext {
        webhooks: Webhooks::new(
            storage.clone(),
            clock.clone(),
            settings.webhooks.clone(),
            rule,
        ),
        stored_keys: crate::keys::StoredKeys::new(
            storage.clone(),
            clock.clone(),
            ms(settings.keys.cache),
        ),
        limits: Arc::new(api::limits::Limits::new(&settings.limits, &clock)),
        storage,
        sender,
        tokens,
        catalogue,
        keys: ApiKeys::from_settings(&settings.api_keys)?,
        apps,
        push: Arc::new(push_keys(settings)?),
        clock,
        ledger: settings.ledger.clone(),
        http: settings.http.clone(),
        sessions,
        broadcasts,
        broadcast_upload_bytes: settings.broadcasts.max_upload_bytes,
        stats,
    }))
}

impl Application {
    /// Connects, migrates and binds. `listen` with port 0 picks a free port
    /// (tests); [`Application::port`] tells which.
    pub async fn build(settings: Settings, clock: SharedClock) -> anyhow::Result<Self> {
        settings.validate()?;
        let shared = Shared::connect(&settings, &clock).await?;
        let Shared {
            storage,
            tokens,
            catalogue,
            sender,
            ..
        } = shared.clone();
        let ledger = settings.ledger.clone();
        let waiting =
            WaitingSender::new(storage.clone(), sender.clone(), clock.clone(), ledger.lease);
        let scheduled =
            ScheduledSender::new(storage.clone(), sender.clone(), clock.clone(), ledger.lease);
        let recovery = Recovery::new(
            storage.clone(),
            sender.clone(),
            clock.clone(),
            ledger.lease,
            ledger.safety_margin,
        );
        let broadcasts = Broadcasts::new(BroadcastParts {
            storage: storage.clone(),
            sender: sender.clone(),
            clock: clock.clone(),
            settings: settings.broadcasts.clone(),
            safety_margin_ms: ms(ledger.safety_margin),
        });
        let broadcast_worker = broadcasts.worker();
        let proxy = proxy_server(&settings, &tokens, &sender, &shared.apps, &clock)?;
        let metrics = metrics_server(&settings, &storage)?;
        // Bound first: webhooks are never sent to the address it listens on.
        let listener = TcpListener::bind(&settings.listen)
            .with_context(|| format!("binding {}", settings.listen))?;
        let rule = target_rule(&settings, listener.local_addr()?);
        let delivery = WebhookDelivery::new(
            storage.clone(),
            clock.clone(),
            settings.webhooks.clone(),
            rule,
        );
        let stats = Stats::new(storage.clone(), clock.clone(), shared.apps.clone());
        let context = api_context(&settings, shared, broadcasts, rule, stats.clone())?;
        let (port, server) = serve(&settings, listener, context)?;
        Ok(Self {
            port,
            server,
            proxy,
            metrics,
            shutdown: CancellationToken::new(),
            storage: storage.clone(),
            token_refresher: TokenRefresher::new(tokens),
            sweeper: Sweeper::new(
                storage,
                clock,
                ledger.credential_retention,
                ledger.message_retention,
            ),
            waiting,
            scheduled,
            recovery,
            broadcast_worker,
            catalogue,
            token_interval: settings.tokens.check_interval,
            sweep_interval: ledger.sweep_interval,
            waiting_interval: ledger.waiting_poll,
            recovery_interval: ledger.recovery_interval,
            delivery,
            delivery_interval: settings.webhooks.poll,
            stats,
            stats_interval: settings.stats.refresh,
        })
    }

    /// The port the API listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port the WeChat-compatible endpoint listens on, when it is on.
    pub fn proxy_port(&self) -> Option<u16> {
        self.proxy.as_ref().map(|(port, _)| *port)
    }

    /// The port `/metrics` is served on, when it is on.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(|(port, _, _)| *port)
    }

    /// The worker of the message gauges (when metrics are on), for tests
    /// that drive its `run_once`.
    pub fn backlog(&self) -> Option<Backlog> {
        self.metrics.as_ref().map(|(_, _, backlog)| backlog.clone())
    }

    /// Cancelling this stops the API and the workers.
    pub fn shutdown_signal(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The ledger, for tests that inspect it.
    pub fn storage(&self) -> Arc<dyn Storage> {
        self.storage.clone()
    }

    /// The token worker, for tests that drive its `run_once`.
    pub fn token_refresher(&self) -> TokenRefresher {
        self.token_refresher.clone()
    }

    /// The sweep worker, for tests that drive its `run_once`.
    pub fn sweeper(&self) -> Sweeper {
        self.sweeper.clone()
    }

    /// The waiting-message worker, for tests that drive its `run_once`.
    pub fn waiting_sender(&self) -> WaitingSender {
        self.waiting.clone()
    }

    /// The scheduled-message worker, for tests that drive its `run_once`.
    pub fn scheduled_sender(&self) -> ScheduledSender {
        self.scheduled.clone()
    }

    /// The broadcast worker, for tests that drive its `run_once`.
    pub fn broadcast_worker(&self) -> BroadcastWorker {
        self.broadcast_worker.clone()
    }

    /// The recovery worker, for tests that drive its `run_once`.
    pub fn recovery(&self) -> Recovery {
        self.recovery.clone()
    }

    /// The webhook delivery worker, for tests that drive its `run_once`.
    pub fn webhook_delivery(&self) -> WebhookDelivery {
        self.delivery.clone()
    }

    /// The operators' figures, for tests that drive their `run_once`.
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// The template catalogue keeper (the send path refreshes it after a
    /// 40037; tests drive it).
    pub fn catalogue(&self) -> Catalogue {
        self.catalogue.clone()
    }

    /// Serves the API without background workers (tests drive them).
    pub async fn run_api_until_stopped(self) -> anyhow::Result<()> {
        let mut handles = vec![self.server.handle()];
        let proxy = self.proxy.map(|(_, server)| {
            handles.push(server.handle());
            tokio::spawn(server)
        });
        let metrics = self.metrics.map(|(_, server, _)| {
            handles.push(server.handle());
            tokio::spawn(server)
        });
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            // Graceful: stop accepting, let in-flight requests finish.
            for handle in handles {
                handle.stop(true).await;
            }
        });
        let served = self.server.await.context("running the HTTP server");
        if let Some(proxy) = proxy {
            proxy
                .await
                .context("joining the WeChat-compatible endpoint")?
                .context("running the WeChat-compatible endpoint")?;
        }
        if let Some(metrics) = metrics {
            metrics
                .await
                .context("joining the metrics endpoint")?
                .context("running the metrics endpoint")?;
        }
        served
    }

    /// Starts every worker, each stopping when `shutdown` is cancelled.
    fn spawn_workers(&self, shutdown: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let refresher = self.token_refresher.clone();
        let sweeper = self.sweeper.clone();
        let waiting = self.waiting.clone();
        let scheduled = self.scheduled.clone();
        let recovery = self.recovery.clone();
        let broadcast_worker = self.broadcast_worker.clone();
        let delivery = self.delivery.clone();
        let webhook_sweeper = self.delivery.clone();
        let mut workers = vec![
            // Scheduled messages are polled as often as waiting ones.
            tokio::spawn(run_every(
                "scheduled",
                self.waiting_interval,
                shutdown.clone(),
                move || {
                    let scheduled = scheduled.clone();
                    async move { scheduled.run_once().await.map(drop) }
                },
            )),
            tokio::spawn(run_broadcasts(broadcast_worker, shutdown.clone())),
            tokio::spawn(run_every(
                "waiting",
                self.waiting_interval,
                shutdown.clone(),
                move || {
                    let waiting = waiting.clone();
                    async move { waiting.run_once().await.map(drop) }
                },
            )),
            // Runs first thing at start: whatever a crash left behind is
            // resolved before the leases of the living could expire.
            tokio::spawn(run_every(
                "recovery",
                self.recovery_interval,
                shutdown.clone(),
                move || {
                    let recovery = recovery.clone();
                    async move { recovery.run_once().await.map(drop) }
                },
            )),
            tokio::spawn(run_every(
                "token_refresher",
                self.token_interval,
                shutdown.clone(),
                move || {
                    let refresher = refresher.clone();
                    async move { refresher.run_once().await.map(drop) }
                },
            )),
            tokio::spawn(run_every(
                "webhook_delivery",
                self.delivery_interval,
                shutdown.clone(),
                move || {
                    let delivery = delivery.clone();
                    async move { delivery.run_once().await.map(drop) }
                },
            )),
            tokio::spawn(run_every(
                "sweeper",
                self.sweep_interval,
                shutdown.clone(),
                move || {
                    let sweeper = sweeper.clone();
                    let webhooks = webhook_sweeper.clone();
                    async move {
                        sweeper.run_once().await?;
                        webhooks.sweep_once().await.map(drop)
                    }
                },
            )),
        ];
        workers.extend(self.spawn_backlog(shutdown));
        workers
    }

    /// Starts the message gauges' worker, when metrics are on.
    fn spawn_backlog(&self, shutdown: &CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        let backlog = self.backlog()?;
        Some(tokio::spawn(run_every(
            "metrics_backlog",
            BACKLOG_INTERVAL,
            shutdown.clone(),
            move || {
                let backlog = backlog.clone();
                async move { backlog.run_once().await }
            },
        )))
    }

    /// Serves the API and runs the workers until SIGTERM, Ctrl-C or the
    /// shutdown signal; then stops taking requests, lets in-flight ones finish
    /// and stops the workers.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let shutdown = self.shutdown.clone();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let mut workers = self.spawn_workers(&shutdown);
        let stats = self.stats.clone();
        workers.push(tokio::spawn(run_every(
            "stats",
            self.stats_interval,
            shutdown.clone(),
            move || {
                let stats = stats.clone();
                async move { stats.run_once().await }
            },
        )));
        let served = self.run_api_until_stopped().await;
        shutdown.cancel();
        for worker in workers {
            worker.await.context("joining a worker")?;
        }
        tracing::info!("stopped");
        served
    }
}

/// How often the message gauges are counted again: one indexed count per
/// status, a fraction of a scrape interval's worth of work.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(15);

/// `/metrics` on `metrics.listen`, bound, when it is set; with the worker
/// of its message gauges.
fn metrics_server(
    settings: &Settings,
    storage: &Arc<dyn Storage>,
) -> anyhow::Result<Option<(u16, Server, Backlog)>> {
    let Some(listen) = &settings.metrics.listen else {
        return Ok(None);
    };
    let (port, server) = monitoring::serve(listen, settings.http.head_timeout)?;
    let backlog = Backlog::new(storage.clone(), settings.apps.keys().cloned().collect());
    Ok(Some((port, server, backlog)))
}

/// Where webhooks may be sent: the settings' switch, and never the
/// gateway's own address.
fn target_rule(settings: &Settings, own: std::net::SocketAddr) -> TargetRule {
    TargetRule {
        allow_private: settings.webhooks.allow_private_targets,
        own: Some(own),
    }
}

/// Connects to the ledger (migrating it) and makes sure every configured app
/// has its row.
async fn connect_storage(settings: &Settings) -> anyhow::Result<Arc<dyn Storage>> {
    let storage =
        storage::connect(&settings.database_url, settings.database_max_connections).await?;
    for appid in settings.apps.keys() {
        storage.ensure_app(appid).await?;
    }
    Ok(storage)
}

fn wechat_client(settings: &Settings) -> anyhow::Result<SharedWeChat> {
    Ok(Arc::new(WeChatClient::new(
        &settings.wechat.base_url,
        settings.wechat.connect_timeout,
        settings.wechat.request_timeout,
        // Why: as many idle connections as calls may be in flight, so
        // that a steady load reuses its connections instead of closing
        // the ones above the idle limit and connecting anew (WeChat is
        // one host for every app).
        settings.wechat.max_concurrent_calls_per_app * settings.apps.len().max(1),
    )?))
}

/// The name this instance holds token refresh leases under.
fn token_holder(settings: &Settings) -> String {
    settings
        .instance_id
        .clone()
        .unwrap_or_else(|| format!("gateway-{}", uuid::Uuid::new_v4()))
}

/// The send path, with its own circuit breakers.
fn sender(
    settings: &Settings,
    storage: &Arc<dyn Storage>,
    tokens: &TokenKeeper,
    wechat: SharedWeChat,
    catalogue: &Catalogue,
    apps: &Arc<BTreeMap<String, AppSettings>>,
    clock: &SharedClock,
) -> Sender {
    let parts = SenderParts {
        storage: storage.clone(),
        tokens: tokens.clone(),
        wechat,
        clock: clock.clone(),
        catalogue: catalogue.clone(),
        apps: apps.clone(),
        breakers: Arc::new(Breakers::new(
            clock.clone(),
            settings.wechat.breaker_failure_threshold,
            settings.wechat.breaker_cooldown,
        )),
    };
    Sender::new(parts, send_settings(settings))
}

fn send_settings(settings: &Settings) -> SendSettings {
    let ledger = &settings.ledger;
    SendSettings {
        safety_margin_ms: ms(ledger.safety_margin),
        fresh_prepay_grace_ms: ms(ledger.fresh_prepay_grace),
        lease_ms: ms(ledger.lease),
        max_attempts: ledger.max_attempts_per_send,
        busy_retries: ledger.busy_retries,
        busy_backoff: Duration::from_millis(200),
        not_ready_retry_ms: ms(ledger.not_ready_retry),
        probe_limit: ledger.probe_limit,
        max_concurrent_calls: settings.wechat.max_concurrent_calls_per_app,
        // The total timeout bounds a call; the connect timeout is part of it.
        call_budget_ms: ms(settings.wechat.request_timeout) + 1_000,
        // A second rejection means the token was retired again right
        // after its fetch; a third, that none works for now.
        token_refreshes: 2,
        token_retry_ms: ms(settings.tokens.send_retry),
        quota_cache_ms: ms(settings.tokens.cache),
    }
}

/// The push keys of every app that has a push token.
fn push_keys(settings: &Settings) -> anyhow::Result<BTreeMap<String, PushKeys>> {
    let mut push = BTreeMap::new();
    for (appid, app) in &settings.apps {
        if let Some(keys) = app.push_keys(appid)? {
            push.insert(appid.clone(), keys);
        }
    }
    Ok(push)
}

/// The WeChat-compatible endpoint on `proxy.listen`, bound, when it is set.
fn proxy_server(
    settings: &Settings,
    tokens: &TokenKeeper,
    sender: &Sender,
    apps: &Arc<BTreeMap<String, AppSettings>>,
    clock: &SharedClock,
) -> anyhow::Result<Option<(u16, Server)>> {
    let Some(listen) = &settings.proxy.listen else {
        return Ok(None);
    };
    let context = ProxyContext {
        tokens: tokens.clone(),
        sender: sender.clone(),
        apps: apps.clone(),
        settings: settings.proxy.clone(),
        clock: clock.clone(),
        upstream: Upstream::new(
            &settings.wechat.base_url,
            settings.wechat.connect_timeout,
            settings.wechat.request_timeout,
        )?,
        book: Arc::default(),
        body_timeout: settings.http.body_timeout,
    };
    proxy::serve(listen, &settings.http, context).map(Some)
}

/// Binds `listen` and starts the HTTP server on it (it serves once awaited);
/// returns the port bound.
fn serve(
    settings: &Settings,
    listener: TcpListener,
    context: web::Data<ApiContext>,
) -> anyhow::Result<(u16, Server)> {
    let port = listener.local_addr()?.port();
    let counted = settings.metrics.listen.is_some();
    let server = HttpServer::new(move || {
        App::new()
            .wrap(crate::api::request_id::access_log())
            // Outside the access log, so that its line carries the id too.
            .wrap(middleware::from_fn(request_id::middleware))
            .wrap(middleware::from_fn(api::error::shape_errors))
            // Outermost: it counts the status the caller gets.
            .wrap(middleware::Condition::new(
                counted,
                middleware::from_fn(monitoring::track_requests),
            ))
            .app_data(context.clone())
            .configure(api::routes)
    })
    // A request's head must arrive within this; its body within
    // `http.body_timeout_ms` (read by the API's JSON reader).
    .client_request_timeout(settings.http.head_timeout)
    .keep_alive(settings.http.keep_alive)
    // One shutdown signal for API and workers: ours, not actix's.
    .disable_signals()
    .shutdown_timeout(30)
    .listen(listener)?
    .run();
    Ok((port, server))
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C: shutting down"),
        _ = terminate => tracing::info!("SIGTERM: shutting down"),
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancel();
}

/// The broadcast worker's loop: a step that handled recipients is followed
/// by the next at once (the job's pacing spaces the batches); one that found
/// nothing rests `broadcasts.poll_ms`.
async fn run_broadcasts(worker: BroadcastWorker, shutdown: CancellationToken) {
    loop {
        let rest = match worker.run_once().await {
            Ok(0) => worker.poll(),
            Ok(_) => Duration::ZERO,
            Err(error) => {
                tracing::error!(worker = "broadcasts", error = ?error, "background step failed");
                worker.poll()
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(rest) => {}
        }
    }
    tracing::info!(worker = "broadcasts", "stopped");
}
