//! `App::build` binds every listener (port 0 allowed), connects and migrates the store, loads the
//! file rules and warms the cache; `App::run_until_stopped` serves until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::audit::sink::AuditSink;
use crate::auth::secret::{SecretVerifier, SharedSecret};
use crate::auth::trust::{DeviceCertVerifier, RejectHook, TrustStore};
use crate::broker::tls::{ClientCerts, TlsSettings};
use crate::broker::{Broker, BrokerSettings};
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::gate::{Gate, GateOptions};
use crate::http::{self, HttpState, ServerLimits};
use crate::registry::cache::{CacheSettings, CachedRegistry};
use crate::registry::{Store, StoreError};

/// Why the app could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad or missing configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store failed.
    #[error("registry: {0}")]
    Store(#[from] StoreError),
    /// The ACL rule files are invalid.
    #[error("ACL rule files: {0}")]
    Acl(#[from] crate::acl::file::AclFileError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The MQTT TLS listener's certificate or key is unusable.
    #[error("MQTT TLS listener: {0}")]
    Tls(#[from] crate::broker::tls::TlsSetupError),
}

/// The bound TLS listener with its acceptor.
struct MqttsListener {
    listener: TcpListener,
    addr: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    verifier: Arc<DeviceCertVerifier>,
    handshake_timeout: std::time::Duration,
}

/// A built, bound, not-yet-serving mqgate.
pub struct App {
    listener: TcpListener,
    addr: SocketAddr,
    mqtt: Option<(TcpListener, SocketAddr)>,
    mqtts: Option<MqttsListener>,
    broker: BrokerSettings,
    routes: http::Routes,
    limits: ServerLimits,
    gate: Arc<Gate>,
    shutdown_timeout: std::time::Duration,
}

impl App {
    /// Builds everything `serve` needs, with the system clock.
    pub async fn build(config: &Config) -> Result<App, StartError> {
        Self::build_with_clock(config, Clock::System).await
    }

    /// Builds with a given clock (tests move time by hand).
    pub async fn build_with_clock(config: &Config, clock: Clock) -> Result<App, StartError> {
        config.require_internal_secret()?;
        let store = Store::connect(config.database_url()).await?;
        Self::build_with(config, store, clock).await
    }

    /// Builds over an already-connected `store` (migrated here).
    pub async fn build_with(
        config: &Config,
        store: Store,
        clock: Clock,
    ) -> Result<App, StartError> {
        let secret = config.require_internal_secret()?.clone();
        // Bind first: brokers connecting during migration and warm-up wait in the accept queue
        // instead of being refused.
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let mqtt = match config.broker.addr {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        store.migrate().await?;
        let file_rules = crate::rule_files::load_dir(&config.acl_rules_dir)?;
        let registry = Arc::new(
            CachedRegistry::new(
                store.clone(),
                CacheSettings {
                    ttl: config.cache_ttl,
                    negative_ttl: config.negative_cache_ttl,
                    capacity: config.cache_capacity,
                },
                file_rules,
            )
            // The store gets three quarters of the decision deadline: past that it is seen as down
            // (uncached devices denied at once) and the answer still leaves in time.
            .with_deadline(config.decision_timeout * 3 / 4),
        );
        if let Some(rx) = store.subscribe_changes().await? {
            registry.spawn_change_listener(rx);
        }
        if config.warm_cache {
            let n = registry.warm().await?;
            tracing::info!(devices = n, "cache warmed");
        }
        let verifier = SecretVerifier::new(
            config.password_concurrency,
            config.password_cache_ttl,
            config.request_timeout,
        );
        let options = GateOptions {
            unknown: config.unknown_client,
            lockout: config.lockout,
            limits: config.limits,
            trust_cert_names: config.emqx_trust_cert_names,
        };
        // One TLS crypto provider for the process (see ARCHITECTURE.md): ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let trust = Arc::new(TrustStore::new(
            config.certs.crl_failure,
            crate::clock::secs(config.certs.expiry_warning),
        ));
        trust.reload(&store).await?;
        let sink = AuditSink::spawn(store.clone());
        let gate = Arc::new(
            Gate::new(registry, verifier, clock, options)
                .with_decision_timeout(config.decision_timeout)
                .with_audit(sink)
                .with_trust(trust)
                .with_shared_guard(),
        );
        gate.load_lockouts().await;
        crate::gate::spawn_lockout_feed(&gate);
        spawn_sweeper(&gate);
        crate::cert_upkeep::spawn(&gate, config.certs.clone());
        let api = config.emqx_api.as_ref().map(|a| {
            tracing::info!(url = %a.url, key = %a.key, "EMQX kicks on (revoked sessions are disconnected)");
            crate::kicker::EmqxApi::new(&a.url, &a.key, &a.secret)
        });
        crate::kicker::spawn(&gate, api);
        let mqtts = match &config.mqtts {
            Some(t) => Some(mqtts_listener(t, &gate).await?),
            None => None,
        };
        let limits = ServerLimits {
            header_read_timeout: config.header_read_timeout,
        };
        let state = HttpState {
            gate: Arc::clone(&gate),
            internal_secret: SharedSecret::new(&secret),
            max_body_bytes: config.max_body_bytes,
            emqx_acl_in_authn: config.emqx_acl_in_authn,
            emqx_max_session_age: crate::clock::secs(config.emqx_max_session_age),
            acl_rules_dir: Arc::new(config.acl_rules_dir.clone()),
        };
        Ok(App {
            listener,
            addr,
            mqtt,
            mqtts,
            broker: config.broker,
            routes: http::Routes::new(state),
            limits,
            gate,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// The HTTP address actually bound.
    pub fn http_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The MQTT address actually bound (`None` when the embedded broker is off).
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt.as_ref().map(|(_, a)| *a)
    }

    /// The MQTT TLS address actually bound (`None` when `mqtts_addr` is off).
    pub fn mqtts_addr(&self) -> Option<SocketAddr> {
        self.mqtts.as_ref().map(|m| m.addr)
    }

    /// The gate (for in-process transports and tests).
    pub fn gate(&self) -> Arc<Gate> {
        Arc::clone(&self.gate)
    }

    /// Serves until `shutdown` turns true, then stops within the shutdown deadline; `Err` when a
    /// fatal fault stopped it (see [`crate::fault`]), after the audit entries queued so far are
    /// written (within the same deadline).
    pub async fn run_until_stopped(
        self,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), FatalFault> {
        tracing::info!(addr = %self.addr, "mqgate listening");
        let (broker_stop, http_stop) = stop_on_fault(self.gate.fault(), shutdown);
        let broker_done = (self.mqtt.is_some() || self.mqtts.is_some()).then(|| {
            spawn_broker(
                Arc::clone(&self.gate),
                self.broker,
                self.mqtt,
                self.mqtts,
                broker_stop,
            )
        });
        http::serve(self.listener, self.routes, self.limits, http_stop).await;
        // Every step below is bounded by one deadline: a store that went away must not keep the
        // process (and the orchestrator waiting on it) past it.
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        // Live MQTT sessions say goodbye and send their wills before the registry closes.
        if let Some(done) = broker_done {
            let drained = tokio::time::Instant::now() + BROKER_DRAIN + Duration::from_secs(1);
            let _ = tokio::time::timeout_at(drained.min(deadline), done).await;
        }
        // Leave a moment of the deadline for closing the store.
        let audit_until = deadline - (self.shutdown_timeout / 10).min(Duration::from_secs(1));
        let (_, dropped) = self.gate.finish_audit(audit_until).await;
        // Closing marks the pool closed at once (the audit writer then gives up); waiting for
        // connections still in use is what may not finish.
        let _ = tokio::time::timeout_at(deadline, self.gate.registry().store().close()).await;
        let unwritten = self.gate.audit_pending();
        if unwritten > 0 || dropped > 0 {
            tracing::error!(
                unwritten,
                dropped,
                "stopped with audit entries not written to the registry"
            );
        } else {
            tracing::info!(unwritten, "stopped; audit trail written");
        }
        match self.gate.fault().reason() {
            Some(reason) => Err(FatalFault(reason)),
            None => Ok(()),
        }
    }
}

/// mqgate stopped because of a fatal fault (the reason given).
#[derive(Debug, thiserror::Error)]
#[error("stopped by a fatal fault: {0}")]
pub struct FatalFault(pub &'static str);

/// How long `/readyz` keeps answering 503 after a fatal fault before HTTP closes too (so that
/// a load balancer or supervisor polling it sees why).
const FAULT_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Stop signals for the broker and for HTTP: both follow `shutdown`; on a fatal fault the broker
/// stops at once (no new connections into a dead router) and HTTP after [`FAULT_LINGER`].
fn stop_on_fault(
    fault: &Arc<crate::fault::Fault>,
    mut shutdown: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, watch::Receiver<bool>) {
    let (broker_tx, broker_rx) = watch::channel(false);
    let (http_tx, http_rx) = watch::channel(false);
    let fault = Arc::clone(fault);
    tokio::spawn(async move {
        tokio::select! {
            _ = stopped(&mut shutdown) => {}
            _ = fault.raised() => {
                broker_tx.send_replace(true);
                tokio::select! {
                    _ = stopped(&mut shutdown) => {}
                    _ = tokio::time::sleep(FAULT_LINGER) => {}
                }
            }
        }
        // Also when the shutdown sender went away (wait_for then errs): stop everything.
        broker_tx.send_replace(true);
        http_tx.send_replace(true);
    });
    (broker_rx, http_rx)
}

/// Resolves when `shutdown` turns true or its sender goes away.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Binds the TLS listener; its verifier records refused certificates in the audit trail.
async fn mqtts_listener(t: &TlsSettings, gate: &Arc<Gate>) -> Result<MqttsListener, StartError> {
    let weak = Arc::downgrade(gate);
    let hook: RejectHook = Arc::new(move |ee, rejection| {
        if let Some(g) = weak.upgrade() {
            g.record_tls_refusal(ee, rejection);
        }
    });
    let verifier = Arc::new(
        DeviceCertVerifier::new(Arc::clone(gate.trust()), gate.clock().clone())
            .mandatory(t.client_certs == ClientCerts::Required)
            .on_reject(hook),
    );
    let acceptor = crate::broker::tls::acceptor(t, Arc::clone(&verifier))?;
    let (listener, addr) = bind(t.addr).await?;
    Ok(MqttsListener {
        listener,
        addr,
        acceptor,
        verifier,
        handshake_timeout: t.handshake_timeout,
    })
}

/// Runs the embedded broker on its own runtime (`mqtt_threads` threads, its own accept loops and
/// connection tasks), as rumqttd runs its listener: the broker's hot path then hands work only to
/// the router thread, not across the HTTP side's workers too, which measured 10–20 % of publish
/// throughput on two cores. Falls back to the main runtime if that runtime cannot be built.
/// Returns a receiver that completes once the broker has stopped: its listeners closed and its
/// sessions ended (bounded by [`BROKER_DRAIN`]).
fn spawn_broker(
    gate: Arc<Gate>,
    settings: BrokerSettings,
    plain: Option<(TcpListener, SocketAddr)>,
    tls: Option<MqttsListener>,
    shutdown: watch::Receiver<bool>,
) -> tokio::sync::oneshot::Receiver<()> {
    let (stopped, done) = tokio::sync::oneshot::channel();
    let runtime = match settings.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .thread_name("mqgate-mqtt")
            .enable_all()
            .build(),
    };
    // Listeners registered with this runtime move to the broker's as std sockets.
    let plain = plain.map(|(l, addr)| (addr, l.into_std()));
    let tls = tls.map(|m| {
        let std = m.listener.into_std();
        (std, m.addr, m.acceptor, m.verifier, m.handshake_timeout)
    });
    let serve = async move {
        let broker = Broker::start(gate, settings, shutdown);
        let mut tasks = Vec::new();
        if let Some((addr, listener)) = plain {
            match listener.and_then(TcpListener::from_std) {
                Ok(l) => {
                    tracing::info!(%addr, "embedded MQTT broker listening");
                    tasks.push(tokio::spawn(Arc::clone(&broker).serve(l)));
                }
                Err(e) => tracing::error!(error = %e, "MQTT listener lost"),
            }
        }
        if let Some((listener, addr, acceptor, verifier, timeout)) = tls {
            match listener.and_then(TcpListener::from_std) {
                Ok(l) => {
                    tracing::info!(%addr, "embedded MQTT broker listening (TLS)");
                    let serve = Arc::clone(&broker).serve_tls(l, acceptor, verifier, timeout);
                    tasks.push(tokio::spawn(serve));
                }
                Err(e) => tracing::error!(error = %e, "MQTT TLS listener lost"),
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        broker.drain(BROKER_DRAIN).await;
        let _ = stopped.send(());
    };
    let rt = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "MQTT runtime unavailable; sharing the main one");
            tokio::spawn(serve);
            return done;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("mqgate-mqtt".into())
        .spawn(move || rt.block_on(serve));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the MQTT thread");
    }
    done
}

/// How long shutdown waits for MQTT sessions to end (DISCONNECT to 5.0 clients, wills out).
const BROKER_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let err = |source| StartError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok((listener, bound))
}

/// Sweeps the gate's brute-force and bucket state every ten seconds, for as long as it lives.
fn spawn_sweeper(gate: &Arc<Gate>) {
    let gate = Arc::downgrade(gate);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            tick.tick().await;
            match gate.upgrade() {
                Some(g) => g.sweep(),
                None => return,
            }
        }
    });
}

/// Raises the soft limit on open descriptors to the hard limit (logged), so that connections
/// waiting for their CONNACK cannot run the process out of descriptors at the common soft limit
/// of 1024 while the hard limit allows far more. Returns the limit in force.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current == limit.maximum {
            tracing::info!(nofile = ?limit.current, "open-file limit already at its hard limit");
            return limit.current;
        }
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        return match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::info!(from = ?limit.current, to = ?limit.maximum, "open-file limit raised to the hard limit");
                limit.maximum
            }
            Err(e) => {
                tracing::warn!(error = %e, nofile = ?limit.current, "could not raise the open-file limit");
                limit.current
            }
        };
    }
    #[allow(unreachable_code)]
    None
}
