//! The route table, derived at start-up from the `google.api.http`
//! annotations in the compiled descriptor set, so that annotating an RPC in a
//! `.proto` file is all it takes to expose it over REST. Methods without an
//! annotation (the internal ones) get no route and stay unreachable.
//!
//! Path templates follow the `google.api.HttpRule` grammar: literal segments,
//! `*`, `**`, variables `{field.path}` or `{field.path=sub/*/pattern}`, and a
//! final `:verb`. Matching is done here, without axum's router, because a
//! verb shares its segment with a variable (`/v1/books/{book_id}:addCopies`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use http::Method;
use http::uri::PathAndQuery;
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MethodDescriptor};
use rentalbook_proto::google::api::{HttpRule, http_rule::Pattern};

/// One RPC reachable through the edge.
#[derive(Debug)]
pub struct Rpc {
    pub method: MethodDescriptor,
    /// Which backend serves it: the second component of the service's
    /// package (`rentalbook.book.v1` → `book`).
    pub backend: String,
    /// `/package.Service/Method`.
    pub grpc_path: PathAndQuery,
    /// What its request's fields accept, checked before it is forwarded.
    pub checks: Vec<crate::rules::FieldCheck>,
}

impl Rpc {
    pub fn is_server_streaming(&self) -> bool {
        self.method.is_server_streaming()
    }

    /// `BookService.GetBook`, for logs and the OpenAPI operation id.
    pub fn short_name(&self) -> String {
        format!(
            "{}.{}",
            self.method.parent_service().name(),
            self.method.name()
        )
    }
}

/// Where the request message comes from besides the path.
#[derive(Clone, Debug)]
pub enum BodyRule {
    /// No body; the remaining fields come from the query string.
    None,
    /// `body: "*"`: the whole JSON body is the request message.
    Whole,
    /// `body: "field"`: the JSON body is that field; the rest from the query.
    Field(FieldDescriptor),
}

/// One HTTP binding of an RPC.
#[derive(Debug)]
pub struct Route {
    pub http_method: Method,
    pub template: PathTemplate,
    pub body: BodyRule,
    /// `response_body: "field"`: only that field of the response is sent.
    pub response_body: Option<FieldDescriptor>,
    pub rpc: Arc<Rpc>,
}

/// A piece of a path template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(String),
    /// `*`: exactly one non-empty segment.
    Single,
    /// `**`: the rest of the path (zero or more segments); only at the end.
    Multi,
}

/// A variable of a template and the pieces it spans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    /// The field path as written (`book_id`, `shelf.name`).
    pub field_path: String,
    first_piece: usize,
    /// One past its last piece.
    end_piece: usize,
}

impl Variable {
    /// Whether the variable is one plain segment (`{x}` or `{x=*}`), whose
    /// value may not contain `/`.
    pub fn is_single_segment(&self, template: &PathTemplate) -> bool {
        self.end_piece - self.first_piece == 1 && template.pieces[self.first_piece] == Piece::Single
    }
}

/// A parsed `google.api.http` path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    pieces: Vec<Piece>,
    verb: Option<String>,
    variables: Vec<Variable>,
}

/// A variable's value as it appeared in the path (still percent-encoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    pub field_path: String,
    pub raw: String,
    pub single_segment: bool,
}

impl PathTemplate {
    pub fn parse(source: &str) -> Result<Self, String> {
        let rest = source
            .strip_prefix('/')
            .ok_or_else(|| format!("`{source}` does not start with `/`"))?;
        // The verb is a `:` outside braces after the last `/` outside braces.
        let mut depth = 0i32;
        let mut colon = None;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                '/' if depth == 0 => colon = None,
                ':' if depth == 0 && colon.is_none() => colon = Some(i),
                _ => {}
            }
            if !(0..=1).contains(&depth) {
                return Err(format!("`{source}` has unbalanced braces"));
            }
        }
        if depth != 0 {
            return Err(format!("`{source}` has unbalanced braces"));
        }
        let (segments, verb) = match colon {
            Some(i) => (&rest[..i], Some(rest[i + 1..].to_owned())),
            None => (rest, None),
        };
        if verb
            .as_deref()
            .is_some_and(|v| v.is_empty() || v.contains(['{', '}', '*', '/']))
        {
            return Err(format!("`{source}` has an invalid verb"));
        }

        let mut pieces = Vec::new();
        let mut variables = Vec::new();
        for segment in split_outside_braces(segments) {
            if let Some(inner) = segment.strip_prefix('{') {
                let inner = inner
                    .strip_suffix('}')
                    .ok_or_else(|| format!("`{source}`: a variable must be a whole segment"))?;
                let (field_path, pattern) = match inner.split_once('=') {
                    Some((f, p)) => (f, p),
                    None => (inner, "*"),
                };
                if field_path.is_empty()
                    || !field_path.split('.').all(|p| {
                        !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    })
                {
                    return Err(format!("`{source}`: `{field_path}` is not a field path"));
                }
                let first_piece = pieces.len();
                for sub in pattern.split('/') {
                    pieces.push(piece(sub, source)?);
                }
                variables.push(Variable {
                    field_path: field_path.to_owned(),
                    first_piece,
                    end_piece: pieces.len(),
                });
            } else {
                pieces.push(piece(segment, source)?);
            }
        }
        if let Some(i) = pieces.iter().position(|p| *p == Piece::Multi)
            && i + 1 != pieces.len()
        {
            return Err(format!("`{source}`: `**` may only be the last segment"));
        }
        Ok(Self {
            source: source.to_owned(),
            pieces,
            verb,
            variables,
        })
    }

    /// The template as written in the annotation.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// The template in OpenAPI's notation: each variable as `{field.path}`.
    pub fn openapi_path(&self) -> String {
        let mut out = String::new();
        let mut i = 0;
        while i < self.pieces.len() {
            out.push('/');
            if let Some(v) = self.variables.iter().find(|v| v.first_piece == i) {
                out.push('{');
                out.push_str(&v.field_path);
                out.push('}');
                i = v.end_piece;
                continue;
            }
            match &self.pieces[i] {
                Piece::Literal(l) => out.push_str(l),
                Piece::Single => out.push('*'),
                Piece::Multi => out.push_str("**"),
            }
            i += 1;
        }
        if self.pieces.is_empty() {
            out.push('/');
        }
        if let Some(verb) = &self.verb {
            out.push(':');
            out.push_str(verb);
        }
        out
    }

    /// How specific the template is, to prefer `/a/{x}:verb` over `/a/{x}`
    /// and literals over wildcards when both match.
    fn specificity(&self) -> (bool, usize, usize) {
        let literals = self
            .pieces
            .iter()
            .filter(|p| matches!(p, Piece::Literal(_)))
            .count();
        let no_multi = self.pieces.iter().filter(|p| **p != Piece::Multi).count();
        (self.verb.is_some(), literals, no_multi)
    }

    /// The variables' raw values if `path` (without the query) matches.
    pub fn matches(&self, path: &str) -> Option<Vec<Captured>> {
        let rest = path.strip_prefix('/')?;
        let mut segments: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        if let Some(verb) = &self.verb {
            let last = segments.last_mut()?;
            let stripped = last.strip_suffix(verb.as_str())?.strip_suffix(':')?;
            *last = stripped;
        }
        // Where each piece's segments start; the end is the next start.
        let mut starts = Vec::with_capacity(self.pieces.len() + 1);
        let mut j = 0;
        for piece in &self.pieces {
            starts.push(j);
            match piece {
                Piece::Literal(lit) => {
                    let seg = segments.get(j)?;
                    if !literal_matches(seg, lit) {
                        return None;
                    }
                    j += 1;
                }
                Piece::Single => {
                    let seg = segments.get(j)?;
                    if seg.is_empty() {
                        return None;
                    }
                    j += 1;
                }
                Piece::Multi => {
                    if segments[j..].iter().any(|s| s.is_empty()) {
                        return None;
                    }
                    j = segments.len();
                }
            }
        }
        starts.push(j);
        if j != segments.len() {
            return None;
        }
        Some(
            self.variables
                .iter()
                .map(|v| Captured {
                    field_path: v.field_path.clone(),
                    raw: segments[starts[v.first_piece]..starts[v.end_piece]].join("/"),
                    single_segment: v.is_single_segment(self),
                })
                .collect(),
        )
    }
}

fn piece(s: &str, source: &str) -> Result<Piece, String> {
    match s {
        "*" => Ok(Piece::Single),
        "**" => Ok(Piece::Multi),
        "" => Err(format!("`{source}` has an empty segment")),
        lit if lit.contains(['{', '}', '*', '=']) => {
            Err(format!("`{source}`: `{lit}` is not a literal segment"))
        }
        lit => Ok(Piece::Literal(lit.to_owned())),
    }
}

fn split_outside_braces(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            '/' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn literal_matches(segment: &str, literal: &str) -> bool {
    segment == literal
        || percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .is_ok_and(|d| d == literal)
}

/// What a request's method and path lead to.
#[derive(Debug)]
pub enum Lookup<'a> {
    Found {
        route: &'a Route,
        captured: Vec<Captured>,
    },
    /// The path exists, but not for this method; these are the methods it has.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

/// Every HTTP binding of every annotated RPC.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {}",
            self.http_method,
            self.template.as_str(),
            self.rpc.grpc_path
        )
    }
}

impl RouteTable {
    /// The routes of every annotated method in `pool` whose backend is one of
    /// `backends`. Annotated methods of other packages are skipped with a
    /// warning; a malformed annotation is an error.
    pub fn from_pool(pool: &DescriptorPool, backends: &[&str]) -> anyhow::Result<Self> {
        let mut routes = Vec::new();
        let Some(http_ext) = pool.get_extension_by_name("google.api.http") else {
            return Ok(Self { routes });
        };
        for service in pool.services() {
            let backend = service
                .package_name()
                .split('.')
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&http_ext) {
                    continue;
                }
                if !backends.contains(&backend.as_str()) {
                    tracing::warn!(
                        method = method.full_name(),
                        backend,
                        "annotated method of a package without a backend: not routed"
                    );
                    continue;
                }
                if method.is_client_streaming() {
                    tracing::warn!(
                        method = method.full_name(),
                        "client-streaming methods cannot be served over REST: not routed"
                    );
                    continue;
                }
                let rule: HttpRule = options
                    .get_extension(&http_ext)
                    .as_message()
                    .ok_or_else(|| {
                        anyhow::anyhow!("{}: google.api.http is not a message", method.full_name())
                    })?
                    .transcode_to()?;
                let grpc_path: PathAndQuery =
                    format!("/{}/{}", service.full_name(), method.name()).parse()?;
                let rpc = Arc::new(Rpc {
                    method: method.clone(),
                    backend: backend.clone(),
                    grpc_path,
                    checks: crate::rules::of_message(&method.input())?,
                });
                let mut bindings = vec![rule.clone()];
                bindings.extend(rule.additional_bindings.iter().cloned());
                for binding in bindings {
                    let route = route_of(&binding, &rpc).map_err(|e| {
                        anyhow::anyhow!("the HTTP binding of {}: {e}", method.full_name())
                    })?;
                    routes.push(route);
                }
            }
        }
        Ok(Self { routes })
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for `method` and `path`. A path that a template with a
    /// custom verb matches (`/v1/books/b1:addCopies`) is that verb's only:
    /// a plain template whose last variable would take the whole segment
    /// (`/v1/books/{book_id}`) does not match it, for any method.
    pub fn lookup(&self, method: &Method, path: &str) -> Lookup<'_> {
        let matching: Vec<(&Route, Vec<Captured>)> = self
            .routes
            .iter()
            .filter_map(|route| route.template.matches(path).map(|c| (route, c)))
            .collect();
        let verb = matching.iter().any(|(r, _)| r.template.verb.is_some());
        let mut allowed: Vec<Method> = Vec::new();
        let mut best: Option<(&Route, Vec<Captured>)> = None;
        for (route, captured) in matching {
            if verb && route.template.verb.is_none() {
                continue;
            }
            if route.http_method != *method {
                if !allowed.contains(&route.http_method) {
                    allowed.push(route.http_method.clone());
                }
                continue;
            }
            let better = best
                .as_ref()
                .is_none_or(|(b, _)| route.template.specificity() > b.template.specificity());
            if better {
                best = Some((route, captured));
            }
        }
        match best {
            Some((route, captured)) => Lookup::Found { route, captured },
            None if allowed.is_empty() => Lookup::NotFound,
            None => {
                allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                Lookup::MethodNotAllowed(allowed)
            }
        }
    }
}

fn route_of(rule: &HttpRule, rpc: &Arc<Rpc>) -> Result<Route, String> {
    let (http_method, path) = match &rule.pattern {
        Some(Pattern::Get(p)) => (Method::GET, p.as_str()),
        Some(Pattern::Put(p)) => (Method::PUT, p.as_str()),
        Some(Pattern::Post(p)) => (Method::POST, p.as_str()),
        Some(Pattern::Delete(p)) => (Method::DELETE, p.as_str()),
        Some(Pattern::Patch(p)) => (Method::PATCH, p.as_str()),
        Some(Pattern::Custom(c)) => (
            Method::from_bytes(c.kind.as_bytes())
                .map_err(|e| format!("method `{}`: {e}", c.kind))?,
            c.path.as_str(),
        ),
        None => return Err("no HTTP method and path".into()),
    };
    let template = PathTemplate::parse(path)?;
    let input = rpc.method.input();
    for v in template.variables() {
        let fields = resolve_field_path(&input, &v.field_path)?;
        let leaf = fields.last().expect("a field path has a field");
        if leaf.is_list() || leaf.is_map() || matches!(leaf.kind(), Kind::Message(_)) {
            return Err(format!(
                "path variable `{}` must name a singular scalar field",
                v.field_path
            ));
        }
    }
    let body = match rule.body.as_str() {
        "" => BodyRule::None,
        "*" => BodyRule::Whole,
        name => BodyRule::Field(input.get_field_by_name(name).ok_or_else(|| {
            format!(
                "body field `{name}` is not a field of {}",
                input.full_name()
            )
        })?),
    };
    let response_body = match rule.response_body.as_str() {
        "" => None,
        name => Some(rpc.method.output().get_field_by_name(name).ok_or_else(|| {
            format!(
                "response_body `{name}` is not a field of {}",
                rpc.method.output().full_name()
            )
        })?),
    };
    Ok(Route {
        http_method,
        template,
        body,
        response_body,
        rpc: rpc.clone(),
    })
}

/// The fields along a dotted path, each by its proto name or JSON name.
pub fn resolve_field_path(
    message: &prost_reflect::MessageDescriptor,
    path: &str,
) -> Result<Vec<FieldDescriptor>, String> {
    let mut out = Vec::new();
    let mut current = message.clone();
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let field = current
            .get_field_by_name(part)
            .or_else(|| current.get_field_by_json_name(part))
            .ok_or_else(|| format!("`{path}` is not a field of {}", message.name()))?;
        if i + 1 < parts.len() {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() => current = m,
                _ => return Err(format!("`{path}`: `{part}` has no fields")),
            }
        }
        out.push(field);
    }
    Ok(out)
}

/// The backends named by the routes, for checking configuration.
pub fn backends_in(table: &RouteTable) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for r in table.routes() {
        *out.entry(r.rpc.backend.clone()).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let pool = crate::descriptor_pool().unwrap();
        RouteTable::from_pool(&pool, &["book", "reserve", "rental", "view"]).unwrap()
    }

    fn found(table: &RouteTable, method: Method, path: &str) -> (String, Vec<(String, String)>) {
        match table.lookup(&method, path) {
            Lookup::Found { route, captured } => (
                route.rpc.grpc_path.to_string(),
                captured
                    .into_iter()
                    .map(|c| (c.field_path, c.raw))
                    .collect(),
            ),
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn templates_parse() {
        let t = PathTemplate::parse("/v1/books/{book_id}:addCopies").unwrap();
        assert_eq!(t.verb.as_deref(), Some("addCopies"));
        assert_eq!(t.variables().len(), 1);
        assert_eq!(t.openapi_path(), "/v1/books/{book_id}:addCopies");

        let t = PathTemplate::parse("/v1/{name=shelves/*/books/*}:get").unwrap();
        assert_eq!(t.pieces.len(), 5);
        assert_eq!(t.openapi_path(), "/v1/{name}:get");
        assert!(!t.variables()[0].is_single_segment(&t));

        let t = PathTemplate::parse("/v1/files/{path=**}").unwrap();
        assert_eq!(t.pieces.last(), Some(&Piece::Multi));

        for bad in [
            "v1/books",
            "/v1/{book_id",
            "/v1/**/x",
            "/v1//x",
            "/v1/{}",
            "/v1/x:",
            "/v1/a{b}",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn templates_match_variables_and_verbs() {
        let t = PathTemplate::parse("/v1/books/{book_id}:addCopies").unwrap();
        let c = t.matches("/v1/books/b-1:addCopies").unwrap();
        assert_eq!(c[0].raw, "b-1");
        assert!(c[0].single_segment);
        assert!(t.matches("/v1/books/b-1").is_none());
        assert!(t.matches("/v1/books/:addCopies").is_none());
        assert!(t.matches("/v1/books/a/b:addCopies").is_none());
        // A colon inside the value is fine; the verb is the literal suffix.
        assert_eq!(t.matches("/v1/books/a:b:addCopies").unwrap()[0].raw, "a:b");

        let t = PathTemplate::parse("/v1/books/{book_id}").unwrap();
        assert_eq!(t.matches("/v1/books/x:y").unwrap()[0].raw, "x:y");
        assert!(t.matches("/v1/books/").is_none());
        assert!(t.matches("/v1/books").is_none());
        assert!(t.matches("/v1/books/a/b").is_none());
        assert_eq!(t.matches("/v1/books/a%2Fb").unwrap()[0].raw, "a%2Fb");

        let t = PathTemplate::parse("/v1/{name=shelves/*}/books").unwrap();
        assert_eq!(
            t.matches("/v1/shelves/s1/books").unwrap()[0].raw,
            "shelves/s1"
        );
        assert!(t.matches("/v1/racks/s1/books").is_none());

        let t = PathTemplate::parse("/files/{path=**}").unwrap();
        assert_eq!(t.matches("/files/a/b/c").unwrap()[0].raw, "a/b/c");
        assert_eq!(t.matches("/files").unwrap()[0].raw, "");

        let t = PathTemplate::parse("/v1/mypage:watch").unwrap();
        assert!(t.matches("/v1/mypage:watch").is_some());
        assert!(t.matches("/v1/mypage").is_none());
        assert!(t.matches("/v1/mypage:watchx").is_none());
    }

    #[test]
    fn routes_come_from_the_annotations() {
        let t = table();
        assert_eq!(
            found(&t, Method::POST, "/v1/books").0,
            "/rentalbook.book.v1.BookService/RegisterBook"
        );
        assert_eq!(
            found(&t, Method::GET, "/v1/books/b1"),
            (
                "/rentalbook.book.v1.BookService/GetBook".to_owned(),
                vec![("book_id".to_owned(), "b1".to_owned())]
            )
        );
        assert_eq!(
            found(&t, Method::POST, "/v1/books/b1:addCopies"),
            (
                "/rentalbook.book.v1.BookService/AddCopies".to_owned(),
                vec![("book_id".to_owned(), "b1".to_owned())]
            )
        );
        assert_eq!(
            found(&t, Method::POST, "/v1/rentals/r1:return").0,
            "/rentalbook.rental.v1.RentalService/ReturnRental"
        );
        assert_eq!(
            found(&t, Method::POST, "/v1/reservations/r1:cancel").0,
            "/rentalbook.reserve.v1.ReservationService/CancelReservation"
        );
        // Additional bindings.
        assert_eq!(
            found(&t, Method::GET, "/v1/mypage").0,
            "/rentalbook.view.v1.MyPageService/GetMyPage"
        );
        assert_eq!(
            found(&t, Method::GET, "/v1/members/bob/mypage"),
            (
                "/rentalbook.view.v1.MyPageService/GetMyPage".to_owned(),
                vec![("member_id".to_owned(), "bob".to_owned())]
            )
        );
        assert_eq!(
            found(&t, Method::GET, "/v1/mypage:watch").0,
            "/rentalbook.view.v1.MyPageService/WatchMyPage"
        );
        let watch = t
            .routes()
            .iter()
            .find(|r| r.rpc.method.name() == "WatchMyPage")
            .unwrap();
        assert!(watch.rpc.is_server_streaming());
        assert_eq!(watch.rpc.backend, "view");
    }

    #[test]
    fn unannotated_methods_are_unreachable() {
        use std::collections::BTreeSet;
        let t = table();
        let internal = [
            "FulfillReservation",
            "RecordReturn",
            "CheckOutItem",
            "MayRenew",
            "CheckInItem",
        ];
        for r in t.routes() {
            assert!(!internal.contains(&r.rpc.method.name()), "{r}");
        }
        assert_eq!(backends_in(&t).len(), 4);
        let routed: BTreeSet<&str> = t.routes().iter().map(|r| r.rpc.method.name()).collect();
        for public in [
            "CheckOut",
            "CheckIn",
            "RenewRental",
            "WithdrawItem",
            "ListItems",
        ] {
            assert!(routed.contains(public), "{public} has a route");
        }
    }

    #[test]
    fn wrong_methods_and_unknown_paths() {
        let t = table();
        match t.lookup(&Method::DELETE, "/v1/books") {
            Lookup::MethodNotAllowed(m) => assert_eq!(m, vec![Method::GET, Method::POST]),
            other => panic!("{other:?}"),
        }
        match t.lookup(&Method::POST, "/v1/mypage:watch") {
            Lookup::MethodNotAllowed(m) => assert_eq!(m, vec![Method::GET]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            t.lookup(&Method::GET, "/v1/books/a/b"),
            Lookup::NotFound
        ));
        assert!(matches!(
            t.lookup(&Method::GET, "/v1/nothing"),
            Lookup::NotFound
        ));
        assert!(matches!(t.lookup(&Method::GET, "/"), Lookup::NotFound));
        assert!(matches!(t.lookup(&Method::GET, ""), Lookup::NotFound));
        // A verb's path is the verb's only: GetBook's `{book_id}` does not
        // take `b1:addCopies`.
        match t.lookup(&Method::GET, "/v1/books/b1:addCopies") {
            Lookup::MethodNotAllowed(m) => assert_eq!(m, vec![Method::POST]),
            other => panic!("{other:?}"),
        }
        // An unknown verb is part of the id, for the service to refuse.
        assert_eq!(
            found(&t, Method::GET, "/v1/books/b1:burn").1[0].1,
            "b1:burn"
        );
    }

    #[test]
    fn field_paths_accept_proto_and_json_names() {
        let pool = crate::descriptor_pool().unwrap();
        let m = pool
            .get_message_by_name("rentalbook.reserve.v1.ListReservationsRequest")
            .unwrap();
        assert_eq!(
            resolve_field_path(&m, "open_only").unwrap()[0].name(),
            "open_only"
        );
        assert_eq!(
            resolve_field_path(&m, "openOnly").unwrap()[0].name(),
            "open_only"
        );
        assert!(resolve_field_path(&m, "nope").is_err());
        assert!(resolve_field_path(&m, "member_id.x").is_err());
    }
}
