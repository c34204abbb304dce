//! The few fields of an X.509 certificate an operator needs to recognise it (subject, issuer,
//! validity), read from its DER. rustls and webpki verify certificates but do not expose
//! these; a pinned self-signed certificate needs its dates checked here, and errors and
//! `login` name the certificate. A full X.509 parser would be a dependency for four fields.

use std::time::{Duration, SystemTime};

use serde::Serialize;

/// What `login` and the error messages say about a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertSummary {
    /// `CN=..., O=...`, in the certificate's order.
    pub subject: String,
    pub issuer: String,
    /// RFC 3339, UTC.
    pub not_before: String,
    pub not_after: String,
    #[serde(skip)]
    pub not_before_time: SystemTime,
    #[serde(skip)]
    pub not_after_time: SystemTime,
}

impl CertSummary {
    /// `None` when the DER is not a certificate this reader understands.
    pub fn parse(der: &[u8]) -> Option<CertSummary> {
        let (cert, _) = Der::new(der).tagged(SEQUENCE)?;
        let (tbs, _) = cert.tagged(SEQUENCE)?;
        let mut rest = tbs;
        // version [0] EXPLICIT, optional (absent in v1 certificates).
        if rest.peek_tag() == Some(0xA0) {
            rest = rest.skip()?;
        }
        rest = rest.skip()?; // serialNumber
        rest = rest.skip()?; // signature AlgorithmIdentifier
        let (issuer, rest) = rest.tagged(SEQUENCE)?;
        let (validity, rest) = rest.tagged(SEQUENCE)?;
        let (subject, _) = rest.tagged(SEQUENCE)?;
        let (not_before, validity) = validity.time()?;
        let (not_after, _) = validity.time()?;
        Some(CertSummary {
            subject: name(attributes(subject)?),
            issuer: name(attributes(issuer)?),
            not_before: rfc3339(not_before),
            not_after: rfc3339(not_after),
            not_before_time: not_before,
            not_after_time: not_after,
        })
    }

    /// Whether subject and issuer are the same name (a self-signed certificate).
    pub fn self_signed(&self) -> bool {
        self.subject == self.issuer
    }
}

impl std::fmt::Display for CertSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "subject {:?}, issued by {:?}, valid {} to {}",
            self.subject, self.issuer, self.not_before, self.not_after
        )
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// A DER byte range, read element by element.
#[derive(Clone, Copy)]
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn new(b: &'a [u8]) -> Self {
        Der(b)
    }

    fn peek_tag(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// The next element: (tag, content, what follows it).
    fn next(self) -> Option<(u8, &'a [u8], Der<'a>)> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7F);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], Der(&rest[len..])))
    }

    /// The next element when its tag is `tag` (its content, and what follows), else None.
    fn tagged(self, tag: u8) -> Option<(Der<'a>, Der<'a>)> {
        let (t, content, rest) = self.next()?;
        (t == tag).then_some((Der(content), rest))
    }

    fn skip(self) -> Option<Der<'a>> {
        self.next().map(|(_, _, rest)| rest)
    }

    fn time(self) -> Option<(SystemTime, Der<'a>)> {
        let (tag, content, rest) = self.next()?;
        let text = std::str::from_utf8(content).ok()?;
        let t = match tag {
            UTC_TIME => {
                // RFC 5280: YY below 50 is 20YY.
                let yy: i64 = text.get(..2)?.parse().ok()?;
                let year = if yy < 50 { 2000 + yy } else { 1900 + yy };
                parse_time(year, text.get(2..)?)?
            }
            GENERALIZED_TIME => parse_time(text.get(..4)?.parse().ok()?, text.get(4..)?)?,
            _ => return None,
        };
        Some((t, rest))
    }
}

fn attributes(d: Der<'_>) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rdns = d;
    while !rdns.0.is_empty() {
        let (set, rest) = rdns.tagged(SET)?;
        rdns = rest;
        let mut atvs = set;
        while !atvs.0.is_empty() {
            let (atv, rest) = atvs.tagged(SEQUENCE)?;
            atvs = rest;
            let (oid, value) = atv.tagged(OID)?;
            let (_, value, _) = value.next()?;
            out.push((
                attribute_name(oid.0),
                String::from_utf8_lossy(value).into_owned(),
            ));
        }
    }
    Some(out)
}

fn name(attrs: Vec<(String, String)>) -> String {
    attrs
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The usual short names (RFC 4514, plus emailAddress); any other attribute by its OID.
fn attribute_name(oid: &[u8]) -> String {
    let short = match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x0A] => "O",
        [0x55, 0x04, 0x0B] => "OU",
        [0x55, 0x04, 0x05] => "serialNumber",
        [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x01] => "emailAddress",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x19] => "DC",
        _ => return oid_text(oid),
    };
    short.to_owned()
}

fn oid_text(oid: &[u8]) -> String {
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for &b in oid {
        value = (value << 7) | u64::from(b & 0x7F);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// `MMDDHHMMSSZ` (seconds mandatory in DER) after the year.
fn parse_time(year: i64, rest: &str) -> Option<SystemTime> {
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    if rest.len() != 11 || !rest.ends_with('Z') {
        return None;
    }
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let secs = u64::try_from(secs).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(subject_cn: &str, not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["gw.example".to_owned()])
            .unwrap_or_else(|e| panic!("{e}"));
        for (kind, value) in [
            (rcgen::DnType::CommonName, subject_cn),
            (rcgen::DnType::OrganizationName, "Profilo Test"),
        ] {
            params.distinguished_name.push(kind, value);
        }
        params.not_before = rcgen::date_time_ymd(2021, 3, 4);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("{e}"))
            .der()
            .to_vec()
    }

    #[test]
    fn reads_subject_issuer_and_both_time_encodings() {
        // 2049 is a UTCTime, 2050 and later a GeneralizedTime (RFC 5280).
        for (year, text) in [
            (2049, "2049-12-31T00:00:00Z"),
            (2051, "2051-12-31T00:00:00Z"),
        ] {
            let summary =
                CertSummary::parse(&cert("gw ca", (year, 12, 31))).unwrap_or_else(|| panic!());
            assert_eq!(summary.subject, "CN=gw ca, O=Profilo Test");
            assert_eq!(summary.issuer, summary.subject);
            assert!(summary.self_signed());
            assert_eq!(summary.not_before, "2021-03-04T00:00:00Z");
            assert_eq!(summary.not_after, text);
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(CertSummary::parse(b""), None);
        assert_eq!(CertSummary::parse(&[0x30, 0x82, 0xFF, 0xFF, 0x00]), None);
        let good = cert("x", (2030, 1, 1));
        assert_eq!(CertSummary::parse(&good[..good.len() / 2]), None);
    }

    #[test]
    fn unknown_attributes_are_named_by_oid() {
        assert_eq!(attribute_name(&[0x55, 0x04, 0x2A]), "2.5.4.42");
        assert_eq!(attribute_name(&[0x55, 0x04, 0x03]), "CN");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
    }
}
