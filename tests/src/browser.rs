//! A browser, as far as the authorization-code grant needs one: it keeps
//! cookies, follows redirects itself (so every hop is recorded), and fills
//! in and submits the sign-in and consent forms of the test provider
//! (node-oidc-provider's development interactions, see
//! [`crate::oauth_server`]). It trusts only the test CA it is given; plain
//! `http://` URLs (the operator's endpoints) work too.

use std::time::Duration;

use reqwest::{Method, StatusCode, header};

/// Redirects followed per navigation before giving up.
const MAX_REDIRECTS: usize = 20;
/// Forms submitted per [`Browser::authorize`] (sign-in, consent, and slack).
const MAX_FORMS: usize = 4;

/// Where a navigation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visit {
    /// The status of the last response.
    pub status: u16,
    /// The last URL requested (see [`Browser::authorize_until`] for the one
    /// exception).
    pub url: String,
    /// The body of the last response.
    pub body: String,
    /// Every URL requested, in order, form submissions included.
    pub hops: Vec<String>,
}

impl Visit {
    /// The first query parameter `name` of [`Self::url`], decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let url = url::Url::parse(&self.url).ok()?;
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// One request a navigation makes.
#[derive(Debug, Clone)]
struct Request {
    method: Method,
    url: String,
    form: Vec<(String, String)>,
}

impl Request {
    fn get(url: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            url: url.into(),
            form: Vec::new(),
        }
    }
}

pub struct Browser {
    http: reqwest::Client,
}

impl Browser {
    /// A browser with an empty cookie jar that trusts only `ca_pem` (one or
    /// more PEM certificates) for HTTPS.
    pub fn new(ca_pem: &str) -> Self {
        let roots = reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes())
            .unwrap_or_else(|e| panic!("the browser's CA PEM: {e}"));
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_only(roots)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("browser HTTP client");
        Self { http }
    }

    /// Opens `url` and follows its redirects, submitting nothing.
    pub async fn get(&self, url: &str) -> Visit {
        let mut visit = empty_visit();
        self.navigate(Request::get(url), None, &mut visit).await;
        visit
    }

    /// Opens `start_url` (the operator's authorization link), signs in at
    /// the provider (login `user`, any password), consents, and follows the
    /// redirects to the client's callback; the visit ends on the page the
    /// callback answers. Pages the provider skips (an existing session or
    /// grant) are simply not submitted.
    pub async fn authorize(&self, start_url: &str) -> Visit {
        self.authorize_inner(start_url, None).await
    }

    /// [`Self::authorize`], but stops before requesting any URL that starts
    /// with `stop` (e.g. the callback): then `url` is that URL, not
    /// requested, and `status` and `body` are those of the redirect to it.
    /// Lets a test tamper with the callback's query and deliver it with
    /// [`Self::get`].
    pub async fn authorize_until(&self, start_url: &str, stop: &str) -> Visit {
        self.authorize_inner(start_url, Some(stop)).await
    }

    async fn authorize_inner(&self, start_url: &str, stop: Option<&str>) -> Visit {
        let mut visit = empty_visit();
        let mut next = Request::get(start_url);
        for _ in 0..=MAX_FORMS {
            if !self.navigate(next, stop, &mut visit).await {
                return visit;
            }
            let Some(form) = interaction_form(&visit) else {
                return visit;
            };
            next = form;
        }
        panic!("the provider kept asking for forms after {MAX_FORMS} submissions: {visit:#?}")
    }

    /// Opens `start_url`, follows the sign-in page's `[ Cancel ]` link and
    /// its redirects to the client's callback (which gets
    /// `error=access_denied`). Panics when no sign-in page with that link
    /// comes.
    pub async fn cancel(&self, start_url: &str) -> Visit {
        let mut visit = empty_visit();
        self.navigate(Request::get(start_url), None, &mut visit)
            .await;
        let abort = tags(&visit.body, "a")
            .into_iter()
            .filter_map(|tag| attr(&tag.attrs, "href").map(str::to_owned))
            .find(|href| href.ends_with("/abort"))
            .unwrap_or_else(|| panic!("no [ Cancel ] link on the page: {visit:#?}"));
        let abort = resolve(&visit.url, &abort);
        self.navigate(Request::get(abort), None, &mut visit).await;
        visit
    }

    /// Sends `request` and follows redirects, recording each hop in
    /// `visit`. Returns false when it stopped before a URL starting with
    /// `stop`.
    async fn navigate(&self, mut request: Request, stop: Option<&str>, visit: &mut Visit) -> bool {
        for _ in 0..=MAX_REDIRECTS {
            if stop.is_some_and(|stop| request.url.starts_with(stop)) {
                visit.url = request.url;
                return false;
            }
            let mut builder = self.http.request(request.method.clone(), &request.url);
            if !request.form.is_empty() {
                builder = builder.form(&request.form);
            }
            let response = builder
                .send()
                .await
                .unwrap_or_else(|e| panic!("{} {}: {e:?}", request.method, request.url));
            let status = response.status();
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| resolve(&request.url, l));
            let body = response.text().await.unwrap_or_default();
            visit.hops.push(request.url.clone());
            visit.status = status.as_u16();
            visit.url = request.url.clone();
            visit.body = body;
            match location {
                Some(location) if status.is_redirection() => {
                    request = match status {
                        // The method and body stay for these two.
                        StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => {
                            Request {
                                url: location,
                                ..request
                            }
                        }
                        _ => Request::get(location),
                    }
                }
                _ => return true,
            }
        }
        panic!("more than {MAX_REDIRECTS} redirects: {visit:#?}")
    }
}

fn empty_visit() -> Visit {
    Visit {
        status: 0,
        url: String::new(),
        body: String::new(),
        hops: Vec::new(),
    }
}

/// `reference` resolved against `base`, as a browser does with `Location`
/// and `href`.
fn resolve(base: &str, reference: &str) -> String {
    match url::Url::parse(base).and_then(|b| b.join(reference)) {
        Ok(url) => url.into(),
        Err(_) => reference.to_owned(),
    }
}

/// The provider's sign-in or consent form on this page (the form with a
/// `prompt` field), filled in: hidden fields as they are, `password`
/// fields with a password, other empty fields with the login `user`.
fn interaction_form(visit: &Visit) -> Option<Request> {
    forms(&visit.body).into_iter().find_map(|form| {
        form.inputs
            .iter()
            .any(|i| attr(i, "name") == Some("prompt"))
            .then(|| form.request(&visit.url))
    })
}

/// A `<form>` and its `<input>`s.
#[derive(Debug)]
struct Form {
    attrs: Vec<(String, String)>,
    inputs: Vec<Vec<(String, String)>>,
}

impl Form {
    fn request(&self, page_url: &str) -> Request {
        let action = attr(&self.attrs, "action").unwrap_or("");
        let url = resolve(page_url, action);
        let fields: Vec<(String, String)> = self
            .inputs
            .iter()
            .filter_map(|input| {
                let name = attr(input, "name")?;
                let kind = attr(input, "type").unwrap_or("text").to_ascii_lowercase();
                let value = match (attr(input, "value"), kind.as_str()) {
                    (Some(value), _) => value,
                    (None, "password") => "password",
                    (None, "hidden" | "submit" | "checkbox" | "radio") => "",
                    (None, _) => "user",
                };
                Some((name.to_owned(), value.to_owned()))
            })
            .collect();
        let method = attr(&self.attrs, "method").unwrap_or("get");
        if method.eq_ignore_ascii_case("post") {
            Request {
                method: Method::POST,
                url,
                form: fields,
            }
        } else {
            let mut url =
                url::Url::parse(&url).unwrap_or_else(|e| panic!("form action {url}: {e}"));
            url.query_pairs_mut().clear().extend_pairs(&fields);
            Request::get(url)
        }
    }
}

/// The forms of a page.
fn forms(html: &str) -> Vec<Form> {
    tags(html, "form")
        .into_iter()
        .map(|form| {
            let rest = &html[form.end..];
            let inner = &rest[..find_ci(rest, "</form").unwrap_or(rest.len())];
            Form {
                attrs: form.attrs,
                inputs: tags(inner, "input").into_iter().map(|t| t.attrs).collect(),
            }
        })
        .collect()
}

/// An opening tag: its attributes (names lower-cased, values unescaped)
/// and the offset just past its `>`.
#[derive(Debug)]
struct Tag {
    attrs: Vec<(String, String)>,
    end: usize,
}

/// The opening tags `<name ...>` of `html`, in order.
fn tags(html: &str, name: &str) -> Vec<Tag> {
    let open = format!("<{name}");
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(found) = find_ci(&html[at..], &open) {
        let start = at + found + open.len();
        at = start;
        // `<formx` is another tag.
        if html[start..]
            .chars()
            .next()
            .is_some_and(|c| !(c.is_ascii_whitespace() || c == '>' || c == '/'))
        {
            continue;
        }
        let (attrs, len) = attributes(&html[start..]);
        at = start + len;
        out.push(Tag { attrs, end: at });
    }
    out
}

/// Parses attributes up to the tag's unquoted `>`; returns them and the
/// length consumed (past the `>`).
fn attributes(s: &str) -> (Vec<(String, String)>, usize) {
    let bytes = s.as_bytes();
    let mut attrs = Vec::new();
    let mut i = 0;
    let skip = |i: &mut usize, pred: &dyn Fn(u8) -> bool| {
        while *i < bytes.len() && pred(bytes[*i]) {
            *i += 1;
        }
    };
    loop {
        skip(&mut i, &|b| b.is_ascii_whitespace() || b == b'/');
        if i >= bytes.len() {
            return (attrs, i);
        }
        if bytes[i] == b'>' {
            return (attrs, i + 1);
        }
        let name_start = i;
        skip(&mut i, &|b| {
            !(b.is_ascii_whitespace() || b == b'=' || b == b'>' || b == b'/')
        });
        let name = s[name_start..i].to_ascii_lowercase();
        skip(&mut i, &|b| b.is_ascii_whitespace());
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            skip(&mut i, &|b| b.is_ascii_whitespace());
            let (start, end) = match bytes.get(i) {
                Some(&q @ (b'"' | b'\'')) => {
                    let start = i + 1;
                    let end = s[start..].find(q as char).map_or(s.len(), |n| start + n);
                    i = (end + 1).min(s.len());
                    (start, end)
                }
                _ => {
                    let start = i;
                    skip(&mut i, &|b| !(b.is_ascii_whitespace() || b == b'>'));
                    (start, i)
                }
            };
            value = unescape(&s[start..end]);
        }
        attrs.push((name, value));
    }
}

fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Byte offset of the first ASCII-case-insensitive match of `needle`.
fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    (0..=h.len().checked_sub(n.len())?).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// Decodes HTML character references: the five named ones and numeric ones.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest.find(';').and_then(|semi| {
            let entity = &rest[1..semi];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => {
                    let number = entity.strip_prefix('#')?;
                    let code = match number.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => number.parse().ok()?,
                    };
                    char::from_u32(code)
                }
            }?;
            Some((c, semi + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sign-in page of oidc-provider 8 (development interactions), trimmed.
    const LOGIN: &str = r#"<!DOCTYPE html><html><body><div class="login-card">
<h1>Sign-in</h1>
<form autocomplete="off" action="https://127.0.0.1:4000/interaction/Xy_1" method="post">
  <input type="hidden" name="prompt" value="login"/>
  <input required type="text" name="login" placeholder="Enter any login" autofocus="on">
  <input required type="password" name="password" placeholder="and password" >
  <button type="submit" class="login login-submit">Sign-in</button>
</form>
<div class="login-help"><a href="https://127.0.0.1:4000/interaction/Xy_1/abort">[ Cancel ]</a></div>
</div></body></html>"#;

    fn page(url: &str, body: &str) -> Visit {
        Visit {
            status: 200,
            url: url.to_owned(),
            body: body.to_owned(),
            hops: vec![url.to_owned()],
        }
    }

    #[test]
    fn the_sign_in_form_is_filled_in() {
        let request = interaction_form(&page("https://127.0.0.1:4000/interaction/Xy_1", LOGIN))
            .expect("a form");
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.url, "https://127.0.0.1:4000/interaction/Xy_1");
        let fields: Vec<(&str, &str)> = request
            .form
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                ("prompt", "login"),
                ("login", "user"),
                ("password", "password")
            ]
        );
    }

    #[test]
    fn the_cancel_link_is_found() {
        let hrefs: Vec<String> = tags(LOGIN, "A")
            .into_iter()
            .filter_map(|t| attr(&t.attrs, "href").map(str::to_owned))
            .collect();
        assert_eq!(hrefs, ["https://127.0.0.1:4000/interaction/Xy_1/abort"]);
    }

    #[test]
    fn the_consent_form_keeps_its_hidden_field_and_a_relative_action() {
        let html = r#"<FORM method=POST action='/interaction/a?x=1&amp;y=2'>
            <input type="hidden" name="prompt" value="consent"/><button>Continue</button></FORM>"#;
        let request = interaction_form(&page("https://h:1/interaction/a", html)).expect("a form");
        assert_eq!(request.url, "https://h:1/interaction/a?x=1&y=2");
        assert_eq!(request.form, [("prompt".to_owned(), "consent".to_owned())]);
    }

    #[test]
    fn a_page_without_the_providers_form_has_none() {
        let html = r#"<form action="/search"><input name="q"></form><formula>"#;
        assert!(interaction_form(&page("http://127.0.0.1:1/done", html)).is_none());
        assert_eq!(forms(html).len(), 1, "<formula> is not a form");
    }

    #[test]
    fn a_get_form_becomes_a_query() {
        let html = r#"<form action="/search"><input name="q" value="a b"><input name="prompt" type=hidden value=login></form>"#;
        let request = interaction_form(&page("http://h/x", html)).expect("a form");
        assert_eq!(request.method, Method::GET);
        assert_eq!(request.url, "http://h/search?q=a+b&prompt=login");
    }

    #[test]
    fn character_references_are_decoded() {
        assert_eq!(
            unescape("a&amp;b&lt;&gt;&quot;&#39;&#x2F;&unknown; & end"),
            "a&b<>\"'/&unknown; & end"
        );
    }

    #[test]
    fn redirects_resolve_against_the_current_url() {
        assert_eq!(
            resolve("https://h:1/auth/abc?x=1", "/interaction/def"),
            "https://h:1/interaction/def"
        );
        assert_eq!(
            resolve("https://h:1/auth", "http://127.0.0.1:9/cb?code=1"),
            "http://127.0.0.1:9/cb?code=1"
        );
    }

    #[test]
    fn the_query_of_the_last_url_is_readable() {
        let visit = page("http://127.0.0.1:9/cb?code=a%2Bb&state=s", "");
        assert_eq!(visit.query_param("code").as_deref(), Some("a+b"));
        assert_eq!(visit.query_param("error"), None);
    }
}
