//! The events of a push, typed (docs/wechat/message-push.md, "The events").
//!
//! Routing is by `MsgType`/`Event`, never by the wrapper's name or by which
//! keys are present. Every quirk of docs/wechat/message-push.md, "Parsing
//! quirks", is accepted:
//!
//! * `List` is one object or an array (both read as repeated fields, see
//!   [`super::document`]);
//! * the items sit in a top-level `List`, in a wrapper
//!   (`SubscribeMsgPopupEvent`, `SubscribeMsgChangeEvent`,
//!   `SubscribeMsgSentEvent`, whichever the event) holding `List`, or in a
//!   wrapper holding the items directly (`"SubscribeMsgPopupEvent":[…]`);
//!   a body with items in two of these places is refused rather than
//!   counted twice;
//! * `CreateTime`, `MsgID`, `ErrorCode`, `PopupScene` come as strings or
//!   numbers; `MsgID` stays a string of digits (it exceeds 2^53).
//!
//! The user is `FromUserName`; `ToUserName` is the app's `gh_` id.

use super::document::{DocError, Fields, Node};

/// `Event` of a popup answer.
pub const POPUP_EVENT: &str = "subscribe_msg_popup_event";
/// `Event` of a template turned off in the service-notification settings.
pub const CHANGE_EVENT: &str = "subscribe_msg_change_event";
/// `Event` of the final result of a subscribe send.
pub const SENT_EVENT: &str = "subscribe_msg_sent_event";
/// The wrappers seen around `List`, whatever the event (a change event has
/// been seen in a popup wrapper: docs/wechat/message-push.md, "Parsing
/// quirks").
const WRAPPERS: [&str; 3] = [
    "SubscribeMsgPopupEvent",
    "SubscribeMsgChangeEvent",
    "SubscribeMsgSentEvent",
];

/// Why a push's document does not make a valid event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// A required field is absent or empty.
    #[error("field {0} is missing")]
    Missing(&'static str),
    /// A field is duplicated or has the wrong shape.
    #[error(transparent)]
    Document(#[from] DocError),
    /// A number field is not a (decimal, integer) number.
    #[error("field {field} is not an integer: {value:?}")]
    NotInteger {
        /// The field.
        field: &'static str,
        /// Its text, cut at 32 chars.
        value: String,
    },
    /// A subscribe event without any item.
    #[error("{0} carries no item")]
    NoItems(&'static str),
    /// Items both at the top level and in a wrapper, or in several wrappers.
    #[error("items in more than one place (top-level List and/or several wrappers)")]
    AmbiguousItems,
    /// A `List` entry that is not an object / element with fields.
    #[error("a List entry is not an object")]
    ItemShape,
}

/// `SubscribeStatusString` of an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeStatus {
    /// `accept`.
    Accept,
    /// `acceptWithAudio`: accepted, with a sound reminder.
    AcceptWithAudio,
    /// `acceptWithAlert`: accepted, with a strong reminder.
    AcceptWithAlert,
    /// `reject`.
    Reject,
    /// Any other value, kept as sent.
    Other(String),
}

impl SubscribeStatus {
    /// Reads a `SubscribeStatusString`.
    pub fn parse(s: &str) -> Self {
        match s {
            "accept" => Self::Accept,
            "acceptWithAudio" => Self::AcceptWithAudio,
            "acceptWithAlert" => Self::AcceptWithAlert,
            "reject" => Self::Reject,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The wire value.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Accept => "accept",
            Self::AcceptWithAudio => "acceptWithAudio",
            Self::AcceptWithAlert => "acceptWithAlert",
            Self::Reject => "reject",
            Self::Other(s) => s,
        }
    }

    /// Whether this is one of the accepts (each grants one send, or switches
    /// a long-term template on).
    pub fn is_accept(&self) -> bool {
        matches!(
            self,
            Self::Accept | Self::AcceptWithAudio | Self::AcceptWithAlert
        )
    }
}

/// The fields every event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHeader {
    /// `FromUserName`: the user's openid.
    pub user: String,
    /// `ToUserName`: the app's original id (`gh_…`), not a user.
    pub app_gh: String,
    /// `CreateTime`, Unix seconds.
    pub create_time: i64,
}

/// One template of a popup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PopupItem {
    /// `TemplateId`.
    pub template_id: String,
    /// `SubscribeStatusString`.
    pub status: SubscribeStatus,
    /// `PopupScene` as sent (`"0"`: in a mini-program page), if present.
    pub popup_scene: Option<String>,
}

/// `subscribe_msg_popup_event`: the user answered a subscribe popup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PopupEvent {
    /// Who, for which app, when.
    pub header: EventHeader,
    /// One per template of the popup (they share the `CreateTime`).
    pub items: Vec<PopupItem>,
}

/// One template of a change event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeItem {
    /// `TemplateId`.
    pub template_id: String,
    /// `SubscribeStatusString`: `reject` is the only value pushed today.
    pub status: SubscribeStatus,
}

/// `subscribe_msg_change_event`: the user changed a template in the
/// service-notification settings (today only to `reject`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// Who, for which app, when.
    pub header: EventHeader,
    /// The templates changed.
    pub items: Vec<ChangeItem>,
}

/// The final result of one subscribe send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentItem {
    /// `TemplateId`.
    pub template_id: String,
    /// `MsgID`: the `msgid` the send answered, as decimal digits.
    pub msgid: String,
    /// `ErrorCode`: 0 when delivered.
    pub error_code: i64,
    /// `ErrorStatus` (`success`, or a failure's description).
    pub error_status: String,
}

/// `subscribe_msg_sent_event`: how subscribe sends finally ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentEvent {
    /// Who, for which app, when.
    pub header: EventHeader,
    /// One per message.
    pub items: Vec<SentItem>,
}

/// Any other push (a message, or an event the gateway does not handle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherEvent {
    /// `MsgType` (`event`, `text`, …), empty if absent.
    pub msg_type: String,
    /// `Event`, if any.
    pub event: Option<String>,
    /// `FromUserName`, empty if absent.
    pub user: String,
    /// `CreateTime`, if present and an integer.
    pub create_time: Option<i64>,
}

/// One push, by its `Event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushEvent {
    /// `subscribe_msg_popup_event`.
    Popup(PopupEvent),
    /// `subscribe_msg_change_event`.
    Change(ChangeEvent),
    /// `subscribe_msg_sent_event`.
    Sent(SentEvent),
    /// Anything else: answered `success`, not stored.
    Other(OtherEvent),
}

impl PushEvent {
    /// Reads the event from the fields of the (decrypted) document.
    pub fn from_fields(fields: &Fields) -> Result<Self, EventError> {
        let msg_type = fields.text("MsgType")?.unwrap_or("").trim();
        let event = fields.text("Event")?.map(str::trim);
        // A subscribe event is routed by its Event even if MsgType is odd.
        match event {
            Some(POPUP_EVENT) => {
                let header = header(fields)?;
                let items = items(fields, POPUP_EVENT)?
                    .iter()
                    .map(|item| {
                        Ok(PopupItem {
                            template_id: required(item, "TemplateId")?,
                            status: SubscribeStatus::parse(&required(
                                item,
                                "SubscribeStatusString",
                            )?),
                            popup_scene: optional_integer_text(item, "PopupScene")?,
                        })
                    })
                    .collect::<Result<_, EventError>>()?;
                Ok(PushEvent::Popup(PopupEvent { header, items }))
            }
            Some(CHANGE_EVENT) => {
                let header = header(fields)?;
                let items = items(fields, CHANGE_EVENT)?
                    .iter()
                    .map(|item| {
                        Ok(ChangeItem {
                            template_id: required(item, "TemplateId")?,
                            status: SubscribeStatus::parse(&required(
                                item,
                                "SubscribeStatusString",
                            )?),
                        })
                    })
                    .collect::<Result<_, EventError>>()?;
                Ok(PushEvent::Change(ChangeEvent { header, items }))
            }
            Some(SENT_EVENT) => {
                let header = header(fields)?;
                let items = items(fields, SENT_EVENT)?
                    .iter()
                    .map(|item| {
                        let msgid = required(item, "MsgID")?;
                        if !is_digits(&msgid) {
                            return Err(not_integer("MsgID", &msgid));
                        }
                        Ok(SentItem {
                            template_id: required(item, "TemplateId")?,
                            msgid,
                            error_code: integer(item, "ErrorCode")?,
                            error_status: item.text("ErrorStatus")?.unwrap_or("").to_owned(),
                        })
                    })
                    .collect::<Result<_, EventError>>()?;
                Ok(PushEvent::Sent(SentEvent { header, items }))
            }
            _ => Ok(PushEvent::Other(OtherEvent {
                msg_type: msg_type.to_owned(),
                event: event.map(str::to_owned),
                user: fields.text("FromUserName")?.unwrap_or("").to_owned(),
                create_time: fields
                    .text("CreateTime")?
                    .and_then(|t| t.trim().parse().ok()),
            })),
        }
    }

    /// The `Event` name (or `MsgType` for a non-event push).
    pub fn name(&self) -> &str {
        match self {
            PushEvent::Popup(_) => POPUP_EVENT,
            PushEvent::Change(_) => CHANGE_EVENT,
            PushEvent::Sent(_) => SENT_EVENT,
            PushEvent::Other(o) => o.event.as_deref().unwrap_or(&o.msg_type),
        }
    }

    /// The header, for the three subscribe events.
    pub fn header(&self) -> Option<&EventHeader> {
        match self {
            PushEvent::Popup(e) => Some(&e.header),
            PushEvent::Change(e) => Some(&e.header),
            PushEvent::Sent(e) => Some(&e.header),
            PushEvent::Other(_) => None,
        }
    }

    /// One identity per item, the same on every retry of the push
    /// (docs/wechat/message-push.md, "Retries and duplicates"):
    /// `FromUserName \n CreateTime \n Event \n TemplateId`, plus `\n MsgID`
    /// for a sent event (two sends of a template may end in the same
    /// second). Items of one event with the same key collapse into one, so
    /// one accept is never counted twice. Keys are per app: scope them by
    /// appid when storing. An [`OtherEvent`] has one key from its user, time
    /// and name.
    pub fn dedupe_keys(&self) -> Vec<String> {
        let mut keys = self.item_keys();
        let mut seen = std::collections::HashSet::new();
        keys.retain(|k| seen.insert(k.clone()));
        keys
    }

    /// The identity of each item, in the order of the items (one for an
    /// [`OtherEvent`]), before equal keys collapse: for a caller that
    /// applies items one by one and must drop the repeats itself.
    pub fn item_keys(&self) -> Vec<String> {
        let key = |h: &EventHeader, tail: &str| {
            format!("{}\n{}\n{}\n{}", h.user, h.create_time, self.name(), tail)
        };
        match self {
            PushEvent::Popup(e) => e
                .items
                .iter()
                .map(|i| key(&e.header, &i.template_id))
                .collect(),
            PushEvent::Change(e) => e
                .items
                .iter()
                .map(|i| key(&e.header, &i.template_id))
                .collect(),
            PushEvent::Sent(e) => e
                .items
                .iter()
                .map(|i| key(&e.header, &format!("{}\n{}", i.template_id, i.msgid)))
                .collect(),
            PushEvent::Other(o) => vec![format!(
                "{}\n{}\n{}",
                o.user,
                o.create_time.map(|t| t.to_string()).unwrap_or_default(),
                self.name()
            )],
        }
    }
}

fn header(fields: &Fields) -> Result<EventHeader, EventError> {
    Ok(EventHeader {
        user: required(fields, "FromUserName")?,
        app_gh: required(fields, "ToUserName")?,
        create_time: integer(fields, "CreateTime")?,
    })
}

/// The item maps of a subscribe event, wherever they sit (see the module
/// doc). An item is any map; its fields are checked by the caller.
fn items<'a>(fields: &'a Fields, event: &'static str) -> Result<Vec<&'a Fields>, EventError> {
    let mut places: Vec<Vec<&Fields>> = Vec::new();
    let top: Vec<&Node> = fields.all("List").collect();
    if !top.is_empty() {
        places.push(list_items(top.into_iter())?);
    }
    for wrapper in WRAPPERS {
        let entries: Vec<&Node> = fields.all(wrapper).collect();
        if entries.is_empty() {
            continue;
        }
        let mut found = Vec::new();
        for entry in entries {
            let map = entry.as_map().ok_or(EventError::ItemShape)?;
            if map.contains("List") {
                // `<Wrapper><List>…</List><List>…</List></Wrapper>` or
                // `"Wrapper":{"List":…}`.
                found.extend(list_items(map.all("List"))?);
            } else {
                // `"Wrapper":[{…},{…}]`: the wrapper holds the items.
                found.push(map);
            }
        }
        places.push(found);
    }
    if places.len() > 1 {
        return Err(EventError::AmbiguousItems);
    }
    let found = places.pop().unwrap_or_default();
    if found.is_empty() {
        return Err(EventError::NoItems(event));
    }
    Ok(found)
}

fn list_items<'a>(nodes: impl Iterator<Item = &'a Node>) -> Result<Vec<&'a Fields>, EventError> {
    nodes
        .map(|n| n.as_map().ok_or(EventError::ItemShape))
        .collect()
}

fn required(fields: &Fields, key: &'static str) -> Result<String, EventError> {
    match fields.text(key)?.map(str::trim) {
        Some(t) if !t.is_empty() => Ok(t.to_owned()),
        _ => Err(EventError::Missing(key)),
    }
}

fn integer(fields: &Fields, key: &'static str) -> Result<i64, EventError> {
    let text = required(fields, key)?;
    text.parse().map_err(|_| not_integer(key, &text))
}

fn optional_integer_text(fields: &Fields, key: &'static str) -> Result<Option<String>, EventError> {
    match fields.text(key)?.map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) if t.parse::<i64>().is_ok() => Ok(Some(t.to_owned())),
        Some(t) => Err(not_integer(key, t)),
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn not_integer(field: &'static str, value: &str) -> EventError {
    EventError::NotInteger {
        field,
        value: value.chars().take(32).collect(),
    }
}
