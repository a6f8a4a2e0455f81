//! The generic field map of a push body, XML or JSON (sniffed from the first
//! non-space byte, whatever the Content-Type says:
//! docs/wechat/message-push.md, "The three modes of a push").
//!
//! Both formats become the same tree: an element or object is a [`Fields`]
//! list of `(name, node)` pairs in document order, where a repeated XML
//! element and the items of a JSON array are repeated pairs. So
//! `<List>a</List><List>b</List>` and `"List":[a,b]` read the same, and a
//! one-item `List` object reads like a one-item array
//! (docs/wechat/message-push.md, "Parsing quirks").
//!
//! Scalars are kept as text exactly as written: JSON integers are read by
//! their exact integer value (a `MsgID` above 2^53 survives), `true` becomes
//! `"true"`, and `null` is as good as absent.
//!
//! XML is read with quick-xml, which expands no custom entity: a DOCTYPE is
//! refused outright and an undeclared entity reference is an error, so an
//! entity-expansion ("billion laughs") body costs nothing.

use std::fmt;

use quick_xml::events::Event as XmlEvent;
use quick_xml::Reader;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deepest nesting accepted. Pushes nest 3 levels (`xml` › wrapper › `List`
/// › field).
pub const MAX_DEPTH: usize = 8;

/// The data format of a push body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `<xml>…</xml>`.
    Xml,
    /// A JSON object.
    Json,
}

impl Format {
    /// `"xml"` or `"json"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Xml => "xml",
            Format::Json => "json",
        }
    }
}

/// Why a body is not a readable document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    /// Empty or only whitespace.
    #[error("the body is empty")]
    Empty,
    /// Starts with neither `<` nor `{`.
    #[error("the body is neither XML nor a JSON object")]
    UnknownFormat,
    /// A `<!DOCTYPE …>`: never needed by WeChat, refused (no entity is ever
    /// expanded).
    #[error("XML with a DOCTYPE is refused")]
    DocType,
    /// Malformed XML, an unknown entity reference, bad UTF-8.
    #[error("malformed XML: {0}")]
    Xml(String),
    /// Malformed JSON, or JSON that is not an object.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("the document nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// An element holding both text and elements.
    #[error("element {0} mixes text and elements")]
    MixedContent(String),
    /// A field that must appear once appears several times.
    #[error("field {0} appears more than once")]
    Duplicate(String),
    /// A field that must be text holds elements (or the reverse).
    #[error("field {0} has the wrong shape")]
    Shape(String),
}

/// One value: text, or a list of named fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A scalar, exactly as written (CDATA and text alike).
    Text(String),
    /// An element with elements, or an object.
    Map(Fields),
}

impl Node {
    /// The fields, if this is a map.
    pub fn as_map(&self) -> Option<&Fields> {
        match self {
            Node::Map(fields) => Some(fields),
            Node::Text(_) => None,
        }
    }
}

/// Named fields in document order; a name may repeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(pub Vec<(String, Node)>);

impl Fields {
    /// Every value named `key`, in order.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.0.iter().filter(move |(k, _)| k == key).map(|(_, v)| v)
    }

    /// Whether a field named `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.all(key).next().is_some()
    }

    /// The text of the field `key`: `None` when absent, an error when it
    /// repeats or is not text.
    pub fn text(&self, key: &str) -> Result<Option<&str>, DocError> {
        let mut values = self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v);
        let first = values.next();
        if values.next().is_some() {
            return Err(DocError::Duplicate(key.to_owned()));
        }
        match first {
            None => Ok(None),
            Some(Node::Text(t)) => Ok(Some(t)),
            Some(Node::Map(_)) => Err(DocError::Shape(key.to_owned())),
        }
    }

    /// The names present, each once, in order of first appearance.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = Vec::new();
        for (k, _) in &self.0 {
            if !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
        keys
    }
}

/// The format of `body` from its first non-whitespace byte (after a UTF-8
/// BOM, if any).
pub fn sniff(body: &[u8]) -> Result<Format, DocError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(DocError::Empty),
        Some(b'<') => Ok(Format::Xml),
        Some(b'{') => Ok(Format::Json),
        Some(_) => Err(DocError::UnknownFormat),
    }
}

/// Sniffs and parses `body` into the fields of its root (`<xml>`'s children,
/// or the object's members).
pub fn parse(body: &[u8]) -> Result<(Format, Fields), DocError> {
    let format = sniff(body)?;
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let fields = match format {
        Format::Xml => parse_xml(body)?,
        Format::Json => parse_json(body)?,
    };
    Ok((format, fields))
}

struct Frame {
    name: String,
    text: String,
    children: Fields,
}

fn xml_err(e: impl fmt::Display) -> DocError {
    DocError::Xml(e.to_string())
}

fn parse_xml(body: &[u8]) -> Result<Fields, DocError> {
    let mut reader = Reader::from_reader(body);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Fields> = None;
    loop {
        match reader.read_event().map_err(xml_err)? {
            XmlEvent::Decl(_) | XmlEvent::Comment(_) | XmlEvent::PI(_) => {}
            XmlEvent::DocType(_) => return Err(DocError::DocType),
            XmlEvent::Start(start) => {
                if root.is_some() {
                    return Err(xml_err("content after the root element"));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(DocError::TooDeep);
                }
                let name = std::str::from_utf8(start.name().as_ref())
                    .map_err(xml_err)?
                    .to_owned();
                stack.push(Frame {
                    name,
                    text: String::new(),
                    children: Fields::default(),
                });
            }
            XmlEvent::Empty(empty) => {
                let name = std::str::from_utf8(empty.name().as_ref())
                    .map_err(xml_err)?
                    .to_owned();
                match stack.last_mut() {
                    Some(parent) => parent.children.0.push((name, Node::Text(String::new()))),
                    None if root.is_none() => root = Some(Fields::default()),
                    None => return Err(xml_err("content after the root element")),
                }
            }
            XmlEvent::Text(text) => {
                // Only the five predefined entities and character references
                // are resolved; anything else is an error.
                let text = text.unescape().map_err(xml_err)?;
                match stack.last_mut() {
                    Some(frame) => frame.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err(xml_err("text outside the root element")),
                }
            }
            XmlEvent::CData(cdata) => {
                let text = std::str::from_utf8(&cdata).map_err(xml_err)?;
                match stack.last_mut() {
                    Some(frame) => frame.text.push_str(text),
                    None => return Err(xml_err("CDATA outside the root element")),
                }
            }
            XmlEvent::End(_) => {
                // quick-xml checks that end names match their start.
                let frame = stack.pop().ok_or_else(|| xml_err("unbalanced end tag"))?;
                let node = if frame.children.0.is_empty() {
                    Node::Text(frame.text)
                } else if frame.text.trim().is_empty() {
                    Node::Map(frame.children)
                } else {
                    return Err(DocError::MixedContent(frame.name));
                };
                match (stack.last_mut(), node) {
                    (Some(parent), node) => parent.children.0.push((frame.name, node)),
                    (None, Node::Map(fields)) => root = Some(fields),
                    (None, Node::Text(t)) if t.trim().is_empty() => root = Some(Fields::default()),
                    (None, Node::Text(_)) => return Err(DocError::Shape(frame.name)),
                }
            }
            XmlEvent::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(xml_err("unclosed element"));
    }
    root.ok_or_else(|| xml_err("no root element"))
}

/// A JSON value read without loss: integers keep their exact digits.
enum Json {
    Null,
    Scalar(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Scalar(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Scalar(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Scalar(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        // A fraction, an exponent or an integer beyond u64: written in
        // scientific notation so that no integer field accepts it (plain
        // `Display` would print a rounded MsgID as digits).
        Ok(Json::Scalar(format!("{v:e}")))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Scalar(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::Scalar(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        // Duplicate keys are kept: a scalar read of one is then refused.
        let mut members = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Json>()? {
            members.push((k, v));
        }
        Ok(Json::Object(members))
    }
}

fn parse_json(body: &[u8]) -> Result<Fields, DocError> {
    // serde_json refuses nesting beyond 128 levels itself.
    let value: Json = serde_json::from_slice(body).map_err(|e| DocError::Json(e.to_string()))?;
    match value {
        Json::Object(members) => object_fields(members, 1),
        _ => Err(DocError::Json("not an object".to_owned())),
    }
}

fn object_fields(members: Vec<(String, Json)>, depth: usize) -> Result<Fields, DocError> {
    if depth > MAX_DEPTH {
        return Err(DocError::TooDeep);
    }
    let mut fields = Fields::default();
    for (key, value) in members {
        match value {
            Json::Null => {}
            Json::Array(items) => {
                for item in items {
                    match item {
                        Json::Null => {}
                        Json::Array(_) => return Err(DocError::Shape(key)),
                        other => {
                            let node = json_node(other, depth)?;
                            fields.0.push((key.clone(), node));
                        }
                    }
                }
            }
            other => {
                let node = json_node(other, depth)?;
                fields.0.push((key, node));
            }
        }
    }
    Ok(fields)
}

fn json_node(value: Json, depth: usize) -> Result<Node, DocError> {
    Ok(match value {
        Json::Scalar(s) => Node::Text(s),
        Json::Object(members) => Node::Map(object_fields(members, depth + 1)?),
        Json::Null | Json::Array(_) => unreachable!("handled by object_fields"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text<'a>(fields: &'a Fields, key: &str) -> &'a str {
        fields.text(key).unwrap().unwrap()
    }

    #[test]
    fn sniffing_ignores_whitespace_and_a_bom() {
        assert_eq!(sniff(b"  \n<xml/>").unwrap(), Format::Xml);
        assert_eq!(sniff(b"\xEF\xBB\xBF{}").unwrap(), Format::Json);
        assert_eq!(sniff(b" \t ").unwrap_err(), DocError::Empty);
        assert_eq!(sniff(b"[1]").unwrap_err(), DocError::UnknownFormat);
        assert_eq!(sniff(b"success").unwrap_err(), DocError::UnknownFormat);
    }

    #[test]
    fn xml_cdata_text_entities_and_repeats() {
        let (format, f) = parse(
            br#"<?xml version="1.0"?><xml><A><![CDATA[x<y]]></A><B>1 &amp; 2</B><C/>
            <L><T>1</T></L><L><T>2</T></L></xml>"#,
        )
        .unwrap();
        assert_eq!(format, Format::Xml);
        assert_eq!(text(&f, "A"), "x<y");
        assert_eq!(text(&f, "B"), "1 & 2");
        assert_eq!(text(&f, "C"), "");
        assert_eq!(f.all("L").count(), 2);
        assert_eq!(f.text("L").unwrap_err(), DocError::Duplicate("L".into()));
        assert_eq!(f.keys(), vec!["A", "B", "C", "L"]);
    }

    #[test]
    fn json_integers_keep_every_digit_and_arrays_become_repeats() {
        let (format, f) =
            parse(br#"{"MsgID":1700827132819554305,"N":-3,"B":true,"Z":null,"F":1.7008271328195543e18,"L":[{"T":"1"},{"T":2}]}"#)
                .unwrap();
        assert_eq!(format, Format::Json);
        assert_eq!(text(&f, "MsgID"), "1700827132819554305");
        assert_eq!(text(&f, "N"), "-3");
        assert_eq!(text(&f, "B"), "true");
        assert_eq!(text(&f, "F"), "1.7008271328195543e18");
        assert_eq!(f.text("Z").unwrap(), None);
        let items: Vec<_> = f.all("L").map(|n| n.as_map().unwrap().clone()).collect();
        assert_eq!(text(&items[1], "T"), "2");
    }

    #[test]
    fn a_doctype_is_refused_and_no_entity_is_expanded() {
        let laughs = br#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<xml><Event>&lol9;</Event></xml>"#;
        assert_eq!(parse(laughs).unwrap_err(), DocError::DocType);
        // Without the DOCTYPE the reference is simply unknown.
        let bare = b"<xml><Event>&lol9;</Event></xml>";
        assert!(matches!(parse(bare).unwrap_err(), DocError::Xml(_)));
        // An external entity is never fetched either.
        let xxe = br#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><A>&e;</A></xml>"#;
        assert_eq!(parse(xxe).unwrap_err(), DocError::DocType);
    }

    #[test]
    fn malformed_or_odd_xml_is_an_error() {
        for bad in [
            &b"<xml><A>1</B></xml>"[..],
            b"<xml><A>1</A>",
            b"<xml><A>1</A></xml><xml/>",
            b"<xml>text<A>1</A></xml>",
            b"<xml>just text</xml>",
            b"<a><b><c><d><e><f><g><h><i>1</i></h></g></f></e></d></c></b></a>",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn json_that_is_not_an_object_or_nests_arrays_is_an_error() {
        assert!(parse(b"{\"a\":").is_err());
        assert!(parse(b"{\"L\":[[1]]}").is_err());
        assert!(parse(b"{} {}").is_err());
        let deep = format!(
            "{}{}",
            "{\"a\":".repeat(10),
            "1".to_owned() + &"}".repeat(10)
        );
        assert_eq!(parse(deep.as_bytes()).unwrap_err(), DocError::TooDeep);
    }
}
