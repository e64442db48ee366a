//! Matching a request's method and path to an endpoint action, with path parameters.

use hyper::Method;

use super::{Action, Resources};

#[derive(Debug)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Debug)]
struct Route {
    pattern: Vec<Segment>,
    /// The pattern as written (`/core/1.0/cluster/{name}`), the metrics' route label.
    label: String,
    actions: Vec<(Method, Action)>,
}

/// A found route: the action (if the method is handled), the path parameters and the pattern.
pub(crate) enum Match<'r> {
    Found(&'r Action, Vec<(String, String)>, &'r str),
    MethodNotAllowed,
    NotFound,
}

/// The endpoints one listener serves.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    pub(crate) fn new(resources: &[Resources]) -> Routes {
        let mut routes = Vec::new();
        for res in resources {
            for (endpoint, path) in
                res.endpoints.iter().flat_map(|e| std::iter::once(&e.path).chain(&e.aliases).map(move |p| (e, p)))
            {
                let full = format!("{}/{}", res.prefix, path.trim_matches('/'));
                let pattern = full
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        Some(name) => Segment::Param(name.to_owned()),
                        None => Segment::Literal(s.to_owned()),
                    })
                    .collect();
                let label = format!("/{}", full.trim_matches('/'));
                routes.push(Route { pattern, label, actions: endpoint.actions.clone() });
            }
        }
        Routes { routes }
    }

    pub(crate) fn find(&self, method: &Method, path: &str) -> Match<'_> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut path_matched = false;
        for route in &self.routes {
            let Some(params) = match_pattern(&route.pattern, &segments) else {
                continue;
            };
            path_matched = true;
            if let Some((_, action)) = route.actions.iter().find(|(m, _)| m == method) {
                return Match::Found(action, params, &route.label);
            }
        }
        if path_matched { Match::MethodNotAllowed } else { Match::NotFound }
    }
}

fn match_pattern(pattern: &[Segment], segments: &[&str]) -> Option<Vec<(String, String)>> {
    if pattern.len() != segments.len() {
        return None;
    }
    let mut params = Vec::new();
    for (p, s) in pattern.iter().zip(segments) {
        match p {
            Segment::Literal(lit) if lit == s => {}
            Segment::Literal(_) => return None,
            Segment::Param(name) => params.push((name.clone(), percent_decode(s)?)),
        }
    }
    Some(params)
}

/// Decodes `%XX` escapes; `None` for malformed escapes or non-UTF-8 results.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Splits a query string into decoded pairs (malformed pairs are dropped).
pub(crate) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::rest::{Endpoint, Response};

    fn action() -> Action {
        Action::new(|_, _| async { Ok(Response::empty()) })
    }

    #[test]
    fn routes_match_literals_params_and_methods() {
        let routes = Routes::new(&[Resources::new(
            "core/1.0",
            vec![Endpoint::new("").get(action()), Endpoint::new("cluster/{name}").delete(action())],
        )]);
        assert!(matches!(routes.find(&Method::GET, "/core/1.0"), Match::Found(_, p, "/core/1.0") if p.is_empty()));
        assert!(matches!(routes.find(&Method::GET, "/core/1.0/"), Match::Found(..)));
        match routes.find(&Method::DELETE, "/core/1.0/cluster/mc%33") {
            Match::Found(_, params, route) => {
                assert_eq!(params, [("name".to_owned(), "mc3".to_owned())]);
                assert_eq!(route, "/core/1.0/cluster/{name}");
            }
            _ => panic!("no match"),
        }
        assert!(matches!(routes.find(&Method::GET, "/core/1.0/cluster/mc3"), Match::MethodNotAllowed));
        assert!(matches!(routes.find(&Method::GET, "/core/1.0/cluster/a/b"), Match::NotFound));
        assert!(matches!(routes.find(&Method::DELETE, "/core/1.0/cluster/%zz"), Match::NotFound));
    }

    #[test]
    fn an_alias_serves_the_same_actions_under_its_own_route() {
        let routes = Routes::new(&[Resources::new(
            "1.0",
            vec![Endpoint::new("notes/{name}").alias("memos/{name}").get(action()), Endpoint::new("/").get(action())],
        )]);
        for (path, route) in [("/1.0/notes/a", "/1.0/notes/{name}"), ("/1.0/memos/a", "/1.0/memos/{name}")] {
            match routes.find(&Method::GET, path) {
                Match::Found(_, params, found) => {
                    assert_eq!((params, found), (vec![("name".to_owned(), "a".to_owned())], route));
                }
                _ => panic!("no match for {path}"),
            }
        }
        assert!(matches!(routes.find(&Method::POST, "/1.0/memos/a"), Match::MethodNotAllowed));
        let root = Routes::new(&[Resources::new("", vec![Endpoint::new("/").get(action())])]);
        assert!(matches!(root.find(&Method::GET, "/"), Match::Found(_, _, "/")));
    }

    #[test]
    fn queries_decode() {
        assert_eq!(
            parse_query("force=1&target=mc%32&x"),
            [("force".into(), "1".into()), ("target".into(), "mc2".into()), ("x".into(), String::new())]
        );
    }
}
