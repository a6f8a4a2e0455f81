//! The template catalogue keeper: each app's templates of both channels,
//! read from WeChat and kept in the `templates` table, and the calls that
//! browse WeChat's public libraries and add or delete templates.
//!
//! Every call to WeChat takes the app's token from the [`TokenKeeper`]; a
//! token errcode (40001, 40014, 42001) refreshes it (compare-and-refresh)
//! and retries once, as the send path does. No call here holds a
//! transaction open; no URL reaches a log or an error.
//!
//! The send path asks [`Catalogue::for_send`] what is known of the template
//! it names (from a copy of the app's templates kept in memory, read again
//! at most once per [`SEND_TEMPLATES_TTL_MS`]) and checks the request with
//! `ledger::templates::check_send`; after a 40037 it calls
//! [`Catalogue::refresh_in_background`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cache::TtlCache;
use crate::clock::SharedClock;
use crate::ledger::settle::{classify, Verdict};
use crate::ledger::states::{Channel, SubscriptionType};
use crate::storage::{SendTemplates, Storage, TemplateForSend, TemplateRecord};
use crate::tokens::{TokenError, TokenKeeper};
use crate::wechat::template_calls::{
    self as wire, errcode_of, TemplateCall, ADDED_ALREADY, MAX_CLASSIC_COUNT,
};
use crate::wechat::{CallError, SharedWeChat};

/// Background refreshes of one app start at most this often, per process:
/// a burst of 40037 answers makes one refresh, not one per send.
const BACKGROUND_REFRESH_INTERVAL_MS: i64 = 30_000;
/// `template/list` pages read at most (20 each): the account holds 25.
const MAX_CLASSIC_PAGES: u32 = 10;

/// Why a catalogue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// WeChat answered an errcode.
    #[error("WeChat answered {errcode} to {api}: {errmsg}")]
    WeChat {
        api: &'static str,
        errcode: i64,
        errmsg: String,
    },
    /// WeChat could not be reached, or its answer was lost.
    #[error("WeChat could not be asked ({api}): {error}")]
    Call { api: &'static str, error: CallError },
    /// No token for the app.
    #[error("no access token for the app: {0}")]
    Token(#[from] TokenError),
    /// WeChat's answer did not have the documented shape.
    #[error("WeChat's answer to {api} does not have the documented shape")]
    Shape { api: &'static str },
    /// WeChat accepted an added template but did not list it.
    #[error("WeChat added template {template_id} but did not list it")]
    NotListed { template_id: String },
    /// The template is neither stored nor listed by WeChat.
    #[error("the app has no template {template_id}")]
    UnknownTemplate { template_id: String },
    /// The ledger failed.
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

/// Keeps the app catalogues; cheap to clone.
#[derive(Debug, Clone)]
pub struct Catalogue {
    storage: Arc<dyn Storage>,
    tokens: TokenKeeper,
    wechat: SharedWeChat,
    clock: SharedClock,
    /// When each app's last background refresh started (clock ms).
    background: Arc<Mutex<HashMap<String, i64>>>,
    /// Each app's templates as the send path last read them.
    for_sends: Arc<TtlCache<Arc<SendTemplates>>>,
}

/// How long the send path uses a copy of an app's templates before reading
/// them again. Why a copy at all: reading them is one round trip to the
/// database per send, which costs more than the send's own writes. Why 1 s:
/// what this process writes (a refresh, a deletion, a prompt result, a push)
/// drops the copy at once, so only what another instance writes waits for
/// it, as the token and the 45009 block do.
pub const SEND_TEMPLATES_TTL_MS: i64 = 1_000;

impl Catalogue {
    /// A keeper over the ledger, the token keeper and WeChat.
    pub fn new(
        storage: Arc<dyn Storage>,
        tokens: TokenKeeper,
        wechat: SharedWeChat,
        clock: SharedClock,
    ) -> Self {
        Self {
            storage,
            tokens,
            wechat,
            background: Arc::default(),
            for_sends: Arc::new(TtlCache::new(SEND_TEMPLATES_TTL_MS, clock.clone())),
            clock,
        }
    }

    /// What is known of `template_id` for a send of the app: its catalogue
    /// entry and channel (see [`SendTemplates::for_send`]), from a copy at
    /// most [`SEND_TEMPLATES_TTL_MS`] old.
    pub async fn for_send(
        &self,
        appid: &str,
        template_id: &str,
    ) -> anyhow::Result<TemplateForSend> {
        let templates = self
            .for_sends
            .get_or_read(appid, || async {
                Ok::<_, anyhow::Error>(Arc::new(self.storage.send_templates(appid).await?))
            })
            .await?;
        Ok(templates.for_send(template_id))
    }

    /// Users of the app decided on `template_ids` (a prompt result, a push):
    /// the send path's copy is dropped unless it already knows each of them
    /// as a subscribe template, so that a first decision is seen by the next
    /// send.
    pub fn decided_on<'a>(&self, appid: &str, template_ids: impl IntoIterator<Item = &'a str>) {
        let known = self.for_sends.fresh(appid).is_some_and(|templates| {
            template_ids.into_iter().all(|template_id| {
                templates.for_send(template_id).channel == Some(Channel::Subscribe)
            })
        });
        if !known {
            self.forget_for_sends(appid);
        }
    }

    /// Drops the send path's copy of the app's templates: this process just
    /// changed them.
    fn forget_for_sends(&self, appid: &str) {
        self.for_sends.invalidate(appid);
    }

    /// One call to WeChat with the app's token: a token errcode refreshes
    /// the token and retries once; errcode 0 (or one of `accept`) is the
    /// answer, any other an error.
    async fn call(
        &self,
        appid: &str,
        call: &TemplateCall,
        accept: &[i64],
    ) -> Result<Value, CatalogueError> {
        let api = call.name();
        let mut token = self.tokens.current(appid).await?;
        let mut retried = false;
        loop {
            let answer = self
                .wechat
                .manage_templates(&token.token, call)
                .await
                .map_err(|error| CatalogueError::Call { api, error })?;
            let (errcode, errmsg) = errcode_of(&answer);
            if errcode == 0 || accept.contains(&errcode) {
                return Ok(answer);
            }
            if classify(errcode) == Verdict::TokenRejected && !retried {
                tracing::info!(appid, api, errcode, "token refused: refreshing once");
                retried = true;
                token = self.tokens.refresh(appid, &token.token).await?;
                continue;
            }
            tracing::warn!(appid, api, errcode, "WeChat refused a template call");
            return Err(CatalogueError::WeChat {
                api,
                errcode,
                errmsg,
            });
        }
    }

    /// [`Catalogue::call`] with the answer read as `T`.
    async fn read<T: DeserializeOwned>(
        &self,
        appid: &str,
        call: &TemplateCall,
    ) -> Result<T, CatalogueError> {
        let answer = self.call(appid, call, &[]).await?;
        serde_json::from_value(answer).map_err(|_| CatalogueError::Shape { api: call.name() })
    }

    /// The app's templates as stored.
    pub async fn stored(&self, appid: &str) -> Result<Vec<TemplateRecord>, CatalogueError> {
        Ok(self.storage.templates(appid).await?)
    }

    /// Re-reads the app's templates of `channels` from WeChat and replaces
    /// the stored ones, channel by channel: a channel WeChat answered is
    /// stored even when another failed; the first failure is the answer.
    #[tracing::instrument(skip_all, fields(appid = %appid))]
    pub async fn refresh(&self, appid: &str, channels: &[Channel]) -> Result<(), CatalogueError> {
        let mut first_error = None;
        for channel in channels {
            let listed = match channel {
                Channel::Template => self.list_classic(appid).await,
                Channel::Subscribe => self.list_subscribe(appid).await,
            };
            let stored = match listed {
                Ok(records) => self
                    .storage
                    .replace_templates_batch(appid, *channel, &records)
                    .await
                    .inspect(|()| self.forget_for_sends(appid))
                    .map(|()| records.len())
                    .map_err(CatalogueError::from),
                Err(error) => Err(error),
            };
            match stored {
                Ok(count) => {
                    tracing::info!(
                        appid,
                        channel = channel.as_str(),
                        count,
                        "templates refreshed"
                    )
                }
                Err(error) => {
                    tracing::warn!(appid, channel = channel.as_str(), %error, "refreshing templates failed");
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Refreshes the app's catalogue (both channels) on a task of its own,
    /// at most once per 30 s per app in this process; for the send path
    /// after WeChat answered 40037 (the template id it sent is not the
    /// app's). Failures are logged. Needs a tokio runtime.
    pub fn refresh_in_background(&self, appid: &str) {
        let now = self.clock.now_ms();
        {
            let mut started = self.background.lock().expect("background refreshes");
            if started
                .get(appid)
                .is_some_and(|at| now - at < BACKGROUND_REFRESH_INTERVAL_MS && now >= *at)
            {
                return;
            }
            started.insert(appid.to_owned(), now);
        }
        let catalogue = self.clone();
        let appid = appid.to_owned();
        tokio::spawn(async move {
            if let Err(error) = refresh_catalogue(&catalogue, &appid).await {
                tracing::warn!(appid, %error, "background template refresh failed");
            }
        });
    }

    /// `template/list`, page by page.
    async fn list_classic(&self, appid: &str) -> Result<Vec<TemplateRecord>, CatalogueError> {
        let now = self.clock.now_ms();
        let mut records = Vec::new();
        for page in 0..MAX_CLASSIC_PAGES {
            let call = TemplateCall::ClassicList {
                offset: page * MAX_CLASSIC_COUNT,
                count: MAX_CLASSIC_COUNT,
            };
            let listed: wire::ClassicPage = self.read(appid, &call).await?;
            let last = listed.list.len() < MAX_CLASSIC_COUNT as usize;
            records.extend(listed.list.into_iter().map(|t| TemplateRecord {
                template_id: t.template_id,
                channel: Channel::Template,
                title: t.title,
                content: t.content,
                example: t.example,
                subscription: SubscriptionType::OneTime,
                enum_values: None,
                refreshed_at: now,
            }));
            if last {
                break;
            }
        }
        Ok(records)
    }

    /// `gettemplate`.
    async fn list_subscribe(&self, appid: &str) -> Result<Vec<TemplateRecord>, CatalogueError> {
        let now = self.clock.now_ms();
        let listed: wire::SubscribeTemplates = self.read(appid, &TemplateCall::GetTemplate).await?;
        Ok(listed
            .data
            .into_iter()
            .map(|t| {
                let enums: BTreeMap<String, Vec<String>> = t
                    .keyword_enum_values
                    .into_iter()
                    .map(|e| (e.keyword_code, e.enum_value_list))
                    .collect();
                TemplateRecord {
                    template_id: t.pri_tmpl_id,
                    channel: Channel::Subscribe,
                    title: t.title,
                    content: t.content,
                    example: t.example,
                    subscription: if t.kind == 3 {
                        SubscriptionType::LongTerm
                    } else {
                        SubscriptionType::OneTime
                    },
                    enum_values: (!enums.is_empty())
                        .then(|| serde_json::to_string(&enums).expect("a map of strings")),
                    refreshed_at: now,
                }
            })
            .collect())
    }

    /// The stored template after a refresh of its channel.
    async fn listed(
        &self,
        appid: &str,
        channel: Channel,
        template_id: String,
    ) -> Result<TemplateRecord, CatalogueError> {
        self.refresh(appid, &[channel]).await?;
        self.storage
            .template(appid, &template_id)
            .await?
            .ok_or(CatalogueError::NotListed { template_id })
    }

    /// `template/add` from the classic library, then the stored template.
    #[tracing::instrument(skip_all, fields(appid = %appid))]
    pub async fn add_classic(
        &self,
        appid: &str,
        library_id: &str,
        keyword_ids: &[u32],
    ) -> Result<TemplateRecord, CatalogueError> {
        let call = TemplateCall::ClassicAdd {
            id: library_id.to_owned(),
            keyword_ids: keyword_ids.to_vec(),
        };
        let added: wire::ClassicAdded = self.read(appid, &call).await?;
        tracing::info!(appid, template_id = %added.template_id, "classic template added");
        self.listed(appid, Channel::Template, added.template_id)
            .await
    }

    /// `addtemplate` from the public subscribe library (200022 "added
    /// already" answers the existing id: a success), then the stored template.
    #[tracing::instrument(skip_all, fields(appid = %appid))]
    pub async fn add_subscribe(
        &self,
        appid: &str,
        tid: u32,
        keyword_ids: &[u32],
        scene_desc: &str,
    ) -> Result<TemplateRecord, CatalogueError> {
        let call = TemplateCall::AddTemplate {
            tid,
            keyword_ids: keyword_ids.to_vec(),
            scene_desc: scene_desc.to_owned(),
        };
        let answer = self.call(appid, &call, &[ADDED_ALREADY]).await?;
        let added: wire::SubscribeAdded = serde_json::from_value(answer)
            .map_err(|_| CatalogueError::Shape { api: call.name() })?;
        tracing::info!(appid, template_id = %added.pri_tmpl_id, "subscribe template added");
        self.listed(appid, Channel::Subscribe, added.pri_tmpl_id)
            .await
    }

    /// Deletes a template of the app at WeChat, then from the ledger. A
    /// template not stored is looked up in a fresh listing first. When
    /// WeChat no longer knows it (40037) it is removed here too, and the
    /// error is the answer.
    #[tracing::instrument(skip_all, fields(appid = %appid))]
    pub async fn delete(&self, appid: &str, template_id: &str) -> Result<(), CatalogueError> {
        let mut record = self.storage.template(appid, template_id).await?;
        if record.is_none() {
            self.refresh(appid, Channel::ALL).await?;
            record = self.storage.template(appid, template_id).await?;
        }
        let Some(record) = record else {
            return Err(CatalogueError::UnknownTemplate {
                template_id: template_id.to_owned(),
            });
        };
        let call = match record.channel {
            Channel::Template => TemplateCall::ClassicDel {
                template_id: template_id.to_owned(),
            },
            Channel::Subscribe => TemplateCall::DelTemplate {
                pri_tmpl_id: template_id.to_owned(),
            },
        };
        let deleted = self.call(appid, &call, &[]).await;
        let gone = match &deleted {
            Ok(_) => true,
            Err(CatalogueError::WeChat { errcode, .. }) => *errcode == 40037,
            Err(_) => false,
        };
        if gone {
            self.storage.delete_template(appid, template_id).await?;
            self.forget_for_sends(appid);
        }
        deleted.map(|_| ())
    }

    /// A page of the classic library's titles (`library/list`).
    pub async fn library_titles(
        &self,
        appid: &str,
        offset: u32,
        count: u32,
    ) -> Result<wire::LibraryPage, CatalogueError> {
        self.read(appid, &TemplateCall::LibraryList { offset, count })
            .await
    }

    /// A classic library title with its keywords (`library/get`).
    pub async fn library_entry(
        &self,
        appid: &str,
        id: &str,
    ) -> Result<wire::LibraryEntry, CatalogueError> {
        self.read(appid, &TemplateCall::LibraryGet { id: id.to_owned() })
            .await
    }

    /// The account's categories (`getcategory`).
    pub async fn categories(&self, appid: &str) -> Result<wire::Categories, CatalogueError> {
        self.read(appid, &TemplateCall::GetCategory).await
    }

    /// A page of the public subscribe titles of some categories (`getpubtemplatetitles`).
    pub async fn pub_titles(
        &self,
        appid: &str,
        category_ids: &[u32],
        start: u32,
        limit: u32,
    ) -> Result<wire::PubTitles, CatalogueError> {
        let call = TemplateCall::GetPubTemplateTitles {
            category_ids: category_ids.to_vec(),
            start,
            limit,
        };
        self.read(appid, &call).await
    }

    /// The keywords of a public subscribe title (`getpubtemplatekeywords`).
    pub async fn pub_keywords(
        &self,
        appid: &str,
        tid: u32,
    ) -> Result<wire::PubKeywords, CatalogueError> {
        self.read(appid, &TemplateCall::GetPubTemplateKeywords { tid })
            .await
    }
}

/// Re-reads both channels of the app's catalogue from WeChat into the
/// ledger; what [`Catalogue::refresh_in_background`] runs.
pub async fn refresh_catalogue(catalogue: &Catalogue, appid: &str) -> Result<(), CatalogueError> {
    catalogue.refresh(appid, Channel::ALL).await
}
