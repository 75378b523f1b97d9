//! Identity (SPEC §6): every product RPC carries `authorization: Bearer <JWT>`
//! and every service verifies it itself. Members' and librarians' tokens are
//! verified with an HS256 secret or with an identity provider's JWKS; tokens of
//! role `service` only with the service secret that the services share.
//!
//! What a token must say besides its signature is [`TokenRules`], the same
//! in every service: when `RENTALBOOK_JWT_AUDIENCE` is set, its `aud` must
//! name it (an identity provider's tokens name the API they are for); when
//! `RENTALBOOK_JWT_ISSUER` is set, its `iss` must be it; unset, neither is
//! looked at. Every token minted here (rental-svc's service tokens,
//! `rentalbook token`, the dev sign-in) carries them when they are set
//! ([`TokenScope`]). Clocks differ: a token is taken from its `nbf` and until
//! its `exp`, both give or take the leeway (`RENTALBOOK_JWT_LEEWAY`, 60 s
//! unless set), and a caller knows until when ([`Caller::valid_until`]), so
//! that a stream opened with the token ends then. A refusal says which of
//! these the token failed.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::config::CommonArgs;
use crate::error::{Reason, Refusal, unauthenticated};
use crate::ids::MemberId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    Librarian,
    Service,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "member" => Ok(Role::Member),
            "librarian" => Ok(Role::Librarian),
            "service" => Ok(Role::Service),
            other => Err(format!(
                "`{other}` is not a role (member, librarian or service)"
            )),
        }
    }
}

/// The claims read from a token.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    exp: u64,
}

/// The claims of a token minted here.
#[derive(Serialize)]
struct Minted<'a> {
    sub: &'a str,
    role: Role,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
}

/// How far a token's times may be off from this machine's clock: from 0 up
/// to 10 minutes, written like `60s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leeway(Duration);

impl Leeway {
    const MAX: Duration = Duration::from_secs(600);

    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for Leeway {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| format!("`{s}` is not a duration like 60s or 2m: {e}"))?;
        if d > Self::MAX {
            return Err(format!(
                "`{s}` is more leeway than the {} a token's clock may be off",
                humantime::format_duration(Self::MAX)
            ));
        }
        Ok(Self(Duration::from_secs(d.as_secs())))
    }
}

impl fmt::Display for Leeway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// The value a claim must have (an audience, an issuer), or none: an empty
/// setting means "not checked". A value is one token of printable text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected(Option<String>);

impl Expected {
    pub fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl FromStr for Expected {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self(None));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) || s.len() > 512 {
            return Err(format!(
                "`{s}` is not a claim value: one word (a URL or a name) of at most 512 characters"
            ));
        }
        Ok(Self(Some(s.to_owned())))
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get().unwrap_or_default())
    }
}

/// Whom tokens are for and who issues them: checked by every service when
/// set, and carried by every token minted here.
#[derive(Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenScope {
    /// The audience tokens are for: when set, a token's `aud` must name it
    /// (alone or in a list), and tokens minted here carry it; unset, `aud`
    /// is not looked at.
    #[arg(
        long = "jwt-audience",
        env = "RENTALBOOK_JWT_AUDIENCE",
        default_value = "",
        hide_default_value = true
    )]
    pub audience: Expected,

    /// Who issues tokens: when set, a token's `iss` must be it, and tokens
    /// minted here carry it; unset, `iss` is not looked at.
    #[arg(
        long = "jwt-issuer",
        env = "RENTALBOOK_JWT_ISSUER",
        default_value = "",
        hide_default_value = true
    )]
    pub issuer: Expected,
}

/// What a token must say besides its signature, every service alike.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct TokenRules {
    #[command(flatten)]
    pub scope: TokenScope,

    /// How far a token's times (`nbf`, `exp`) may be off from this machine's
    /// clock: a token is taken from `nbf` minus this until `exp` plus this,
    /// and a live stream opened with it ends then.
    #[arg(
        long = "jwt-leeway",
        env = "RENTALBOOK_JWT_LEEWAY",
        default_value = "60s"
    )]
    pub leeway: Leeway,
}

impl Default for TokenRules {
    fn default() -> Self {
        Self {
            scope: TokenScope::default(),
            leeway: Leeway(Duration::from_secs(60)),
        }
    }
}

impl TokenRules {
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway.get().as_secs();
        v.validate_nbf = true;
        match self.scope.audience.get() {
            Some(aud) => {
                v.set_audience(&[aud]);
                v.required_spec_claims.insert("aud".to_owned());
            }
            None => v.validate_aud = false,
        }
        if let Some(iss) = self.scope.issuer.get() {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".to_owned());
        }
        v
    }

    /// What the scope asks of a token, as the end of a sentence.
    fn requirements(&self) -> String {
        let mut asked = Vec::new();
        if let Some(aud) = self.scope.audience.get() {
            asked.push(format!("name `{aud}` in `aud`"));
        }
        if let Some(iss) = self.scope.issuer.get() {
            asked.push(format!("have `iss` `{iss}`"));
        }
        if asked.is_empty() {
            String::new()
        } else {
            format!(": tokens here must {}", asked.join(" and "))
        }
    }

    /// The member-readable refusal for a token that failed `e`.
    fn refusal(&self, e: &JwtError) -> Status {
        let message = match e.kind() {
            ErrorKind::ExpiredSignature => "the token has expired; sign in again".to_owned(),
            ErrorKind::ImmatureSignature => {
                "the token is not valid yet (its `nbf` is in the future); sign in again later, \
                 or check the clocks"
                    .to_owned()
            }
            ErrorKind::InvalidAudience => format!(
                "the token is not meant for this service: its `aud` must name `{}`",
                self.scope.audience
            ),
            ErrorKind::InvalidIssuer => format!(
                "the token was not issued by `{}` (its `iss` says another issuer)",
                self.scope.issuer
            ),
            ErrorKind::MissingRequiredClaim(claim) => {
                format!("the token has no `{claim}` claim{}", self.requirements())
            }
            ErrorKind::Json(e) => format!("the token's claims cannot be read: {e}"),
            _ => "the token is invalid (malformed, or not signed with a key this service \
                  trusts); sign in again"
                .to_owned(),
        };
        unauthenticated(message)
    }
}

/// Whether `e` says only that the token was not signed with this key (so
/// another key may be the one).
fn another_key(e: &JwtError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat
    )
}

/// The verified caller of an RPC, put into the request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub member: MemberId,
    pub role: Role,
    /// When the caller's token stops being taken (its `exp` plus the
    /// leeway).
    pub valid_until: SystemTime,
}

impl Caller {
    /// The caller of a request that passed the [`Authenticator`].
    pub fn of<T>(req: &Request<T>) -> Result<Caller, Status> {
        req.extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| unauthenticated("a bearer token is required"))
    }

    pub fn is_librarian(&self) -> bool {
        self.role == Role::Librarian
    }

    /// How much longer the caller's token is taken; zero once it is not.
    pub fn valid_for(&self) -> Duration {
        self.valid_until
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    pub fn require_librarian(&self, what: &str) -> Result<(), Status> {
        if self.is_librarian() {
            Ok(())
        } else {
            Err(Refusal::permission_denied(
                Reason::LibrariansOnly,
                format!("only a librarian may {what}"),
            )
            .into())
        }
    }

    pub fn require_service(&self) -> Result<(), Status> {
        if self.role == Role::Service {
            Ok(())
        } else {
            Err(Refusal::permission_denied(
                Reason::ServicesOnly,
                "this operation is internal to the lending desk",
            )
            .into())
        }
    }

    /// Members act for themselves; librarians (and services) for anyone. A
    /// service refuses a member another member's record as if it did not
    /// exist (NOT_FOUND, SPEC §6), and a request naming another member
    /// with PERMISSION_DENIED ([`Caller::subject`]).
    pub fn may_see(&self, member: &MemberId) -> bool {
        self.role != Role::Member || &self.member == member
    }

    /// The member a list or page request is about: empty means the caller.
    pub fn subject(&self, requested: &str) -> Result<MemberId, Status> {
        if requested.is_empty() {
            return Ok(self.member.clone());
        }
        let member = MemberId::parse(requested)
            .map_err(|e| Refusal::invalid_field("member_id", format!("member_id: {e}")))?;
        if !self.may_see(&member) {
            return Err(Refusal::permission_denied(
                Reason::OtherMember,
                "members may only see their own reservations, rentals and page",
            )
            .into());
        }
        Ok(member)
    }
}

enum MemberKeys {
    Secret(DecodingKey),
    Jwks(Vec<(Option<String>, Algorithm, DecodingKey)>),
}

/// The last `exp` taken (9999-12-31T23:59:59Z): later ones are no time a
/// clock can count to.
const LAST_EXP: u64 = 253_402_300_799;

/// Verifies bearer tokens.
pub struct Verifier {
    member_keys: MemberKeys,
    service_key: DecodingKey,
    rules: TokenRules,
}

impl Verifier {
    pub fn from_args(args: &CommonArgs) -> anyhow::Result<Self> {
        let secret = args.jwt_secret.as_deref().filter(|s| !s.is_empty());
        let service_secret = args
            .service_secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .or(secret)
            .context("set RENTALBOOK_SERVICE_SECRET (or RENTALBOOK_JWT_SECRET) so services can call each other")?;
        let member_keys = match (&args.jwks_file, secret) {
            (Some(path), _) => MemberKeys::Jwks(load_jwks(path)?),
            (None, Some(secret)) => MemberKeys::Secret(DecodingKey::from_secret(secret.as_bytes())),
            (None, None) => anyhow::bail!(
                "no key to verify tokens: set RENTALBOOK_JWT_SECRET or RENTALBOOK_JWKS_FILE"
            ),
        };
        Ok(Self {
            member_keys,
            service_key: DecodingKey::from_secret(service_secret.as_bytes()),
            rules: args.tokens.clone(),
        })
    }

    /// A verifier for HS256 tokens signed with one secret (tests, the all-in-one).
    pub fn with_secret(secret: &str) -> Self {
        Self {
            member_keys: MemberKeys::Secret(DecodingKey::from_secret(secret.as_bytes())),
            service_key: DecodingKey::from_secret(secret.as_bytes()),
            rules: TokenRules::default(),
        }
    }

    /// The same, with these rules.
    pub fn with_rules(mut self, rules: TokenRules) -> Self {
        self.rules = rules;
        self
    }

    pub fn verify(&self, token: &str) -> Result<Caller, Status> {
        let claims = self.verify_claims(token)?;
        let member = MemberId::parse(&claims.sub)
            .map_err(|e| unauthenticated(format!("the token's subject: {e}")))?;
        if claims.exp > LAST_EXP {
            return Err(unauthenticated(
                "the token's `exp` is past the year 9999; sign in again",
            ));
        }
        Ok(Caller {
            member,
            role: claims.role,
            valid_until: UNIX_EPOCH + Duration::from_secs(claims.exp) + self.rules.leeway.get(),
        })
    }

    fn verify_claims(&self, token: &str) -> Result<Claims, Status> {
        let invalid =
            || unauthenticated("the token is not a JWT (header.claims.signature); sign in again");
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        let hs256 = self.rules.validation(Algorithm::HS256);
        // A service token is only good with the shared service secret.
        match jsonwebtoken::decode::<Claims>(token, &self.service_key, &hs256) {
            Ok(data) if data.claims.role == Role::Service => return Ok(data.claims),
            // The members' key may be the same secret: theirs to judge.
            Ok(_) => {}
            Err(e) if another_key(&e) => {}
            Err(e) => return Err(self.rules.refusal(&e)),
        }
        let decoded = match &self.member_keys {
            MemberKeys::Secret(key) => jsonwebtoken::decode::<Claims>(token, key, &hs256),
            MemberKeys::Jwks(keys) => {
                let mut candidates = keys.iter().filter(|(kid, alg, _)| {
                    *alg == header.alg && (header.kid.is_none() || header.kid == *kid)
                });
                let first = candidates.next().ok_or_else(|| {
                    unauthenticated(format!(
                        "the token is signed with a key ({:?}{}) this service does not know; \
                         sign in again",
                        header.alg,
                        header
                            .kid
                            .as_deref()
                            .map(|k| format!(", kid `{k}`"))
                            .unwrap_or_default()
                    ))
                })?;
                let mut decoded = jsonwebtoken::decode::<Claims>(
                    token,
                    &first.2,
                    &self.rules.validation(first.1),
                );
                for (_, alg, key) in candidates {
                    match &decoded {
                        Err(e) if another_key(e) => {
                            decoded = jsonwebtoken::decode::<Claims>(
                                token,
                                key,
                                &self.rules.validation(*alg),
                            );
                        }
                        _ => break,
                    }
                }
                decoded
            }
        };
        let claims = decoded.map_err(|e| self.rules.refusal(&e))?.claims;
        if claims.role == Role::Service {
            return Err(unauthenticated(
                "a `service` token must be signed with the service secret",
            ));
        }
        Ok(claims)
    }
}

fn load_jwks(path: &Path) -> anyhow::Result<Vec<(Option<String>, Algorithm, DecodingKey)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the JWKS file {}", path.display()))?;
    let set: JwkSet = serde_json::from_str(&text)
        .with_context(|| format!("parsing the JWKS file {}", path.display()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let Some(alg) = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok())
        else {
            anyhow::bail!("every key in {} needs an `alg`", path.display());
        };
        let key = DecodingKey::from_jwk(jwk)
            .with_context(|| format!("a key in {} is not usable", path.display()))?;
        keys.push((jwk.common.key_id.clone(), alg, key));
    }
    anyhow::ensure!(!keys.is_empty(), "{} holds no keys", path.display());
    Ok(keys)
}

/// Signs an HS256 token, for `rentalbook token` and for service-to-service calls.
pub fn mint(secret: &str, member: &MemberId, role: Role, ttl: Duration) -> anyhow::Result<String> {
    mint_for(secret, member, role, ttl, &TokenScope::default())
}

/// Signs an HS256 token that carries the audience and issuer of `scope`
/// when they are set.
pub fn mint_for(
    secret: &str,
    member: &MemberId,
    role: Role,
    ttl: Duration,
    scope: &TokenScope,
) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Minted {
        sub: member.as_str(),
        role,
        iat: now,
        exp: now + ttl.as_secs(),
        aud: scope.audience.get(),
        iss: scope.issuer.get(),
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Mints and refreshes the short-lived token a service uses to call another.
pub struct ServiceToken {
    secret: String,
    name: MemberId,
    scope: TokenScope,
    current: std::sync::Mutex<(String, std::time::Instant)>,
}

impl ServiceToken {
    const TTL: Duration = Duration::from_secs(300);

    /// A token named `service_name`, carrying the audience and issuer the
    /// services require (`scope`).
    pub fn new(secret: &str, service_name: &str, scope: TokenScope) -> anyhow::Result<Self> {
        let name = MemberId::parse(service_name).map_err(anyhow::Error::msg)?;
        let token = mint_for(secret, &name, Role::Service, Self::TTL, &scope)?;
        Ok(Self {
            secret: secret.to_owned(),
            name,
            scope,
            current: std::sync::Mutex::new((token, std::time::Instant::now())),
        })
    }

    /// The `authorization` header value, re-minted well before expiry.
    pub fn bearer(&self) -> String {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.1.elapsed() > Self::TTL / 2
            && let Ok(token) = mint_for(
                &self.secret,
                &self.name,
                Role::Service,
                Self::TTL,
                &self.scope,
            )
        {
            *current = (token, std::time::Instant::now());
        }
        format!("Bearer {}", current.0)
    }
}

/// The tonic interceptor in front of every product service: no valid token,
/// no call.
#[derive(Clone)]
pub struct Authenticator {
    verifier: Arc<Verifier>,
}

impl Authenticator {
    pub fn new(verifier: Arc<Verifier>) -> Self {
        Self { verifier }
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| unauthenticated("a bearer token is required"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| unauthenticated("the authorization header must be `Bearer <token>`"))?;
        let caller = self.verifier.verify(token)?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(s: &str) -> MemberId {
        MemberId::parse(s).unwrap()
    }

    #[test]
    fn tokens_round_trip_and_forgeries_fail() {
        let v = Verifier::with_secret("s3cret");
        let t = mint(
            "s3cret",
            &member("alice"),
            Role::Member,
            Duration::from_secs(60),
        )
        .unwrap();
        let caller = v.verify(&t).unwrap();
        assert_eq!(caller.member.as_str(), "alice");
        assert_eq!(caller.role, Role::Member);

        let forged = mint(
            "other",
            &member("alice"),
            Role::Librarian,
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(
            v.verify(&forged).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            v.verify("garbage").unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn expired_tokens_fail() {
        let t = signed(serde_json::json!({"sub": "alice", "role": "member", "exp": 1_000_000}));
        let e = Verifier::with_secret("k").verify(&t).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("expired"), "{}", e.message());
    }

    /// A token with these claims, signed with the secret `k`.
    fn signed(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap()
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn rules(audience: &str, issuer: &str, leeway: &str) -> TokenRules {
        TokenRules {
            scope: TokenScope {
                audience: audience.parse().unwrap(),
                issuer: issuer.parse().unwrap(),
            },
            leeway: leeway.parse().unwrap(),
        }
    }

    #[test]
    fn audience_issuer_and_times_are_checked_with_the_leeway() {
        let strict = Verifier::with_secret("k").with_rules(rules("api", "https://id", "10s"));
        let claims = |extra: serde_json::Value| {
            let mut c = serde_json::json!({
                "sub": "alice", "role": "member", "exp": now() + 60,
                "aud": "api", "iss": "https://id",
            });
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            signed(c)
        };
        let ok = |extra| strict.verify(&claims(extra)).map(|c| c.member.to_string());
        let says = |extra| {
            strict
                .verify(&claims(extra))
                .unwrap_err()
                .message()
                .to_owned()
        };
        assert_eq!(ok(serde_json::json!({})).unwrap(), "alice");
        assert!(ok(serde_json::json!({"aud": ["x", "api"]})).is_ok());
        assert!(ok(serde_json::json!({"nbf": now() + 5, "exp": now() - 5})).is_ok());
        assert!(says(serde_json::json!({"aud": "other"})).contains("must name `api`"));
        assert!(says(serde_json::json!({"aud": null})).contains("`aud`"));
        assert!(says(serde_json::json!({"iss": "https://evil"})).contains("`https://id`"));
        assert!(says(serde_json::json!({"nbf": now() + 60})).contains("not valid yet"));
        assert!(says(serde_json::json!({"exp": now() - 60})).contains("expired"));
        assert!(says(serde_json::json!({"role": null})).contains("cannot be read"));

        // Unset, neither is looked at; `nbf` always is.
        let lax = Verifier::with_secret("k");
        assert!(
            lax.verify(&claims(serde_json::json!({"aud": "anything"})))
                .is_ok()
        );
        let e = lax
            .verify(&claims(serde_json::json!({"nbf": now() + 3600})))
            .unwrap_err();
        assert!(e.message().contains("not valid yet"), "{}", e.message());

        // An `exp` past what a clock counts to is refused, not added up.
        let e = strict
            .verify(&claims(serde_json::json!({"exp": u64::MAX})))
            .unwrap_err();
        assert!(e.message().contains("9999"), "{}", e.message());

        // The stream of a caller ends when the token stops being taken.
        let caller = strict.verify(&claims(serde_json::json!({}))).unwrap();
        let left = caller.valid_for().as_secs();
        assert!((65..=70).contains(&left), "{left}");
    }

    #[test]
    fn minted_tokens_carry_the_scope_and_pass_the_rules() {
        let r = rules("api", "https://id", "0s");
        let t = mint_for(
            "k",
            &member("alice"),
            Role::Librarian,
            Duration::from_secs(60),
            &r.scope,
        )
        .unwrap();
        let v = Verifier::with_secret("k").with_rules(r.clone());
        assert!(v.verify(&t).unwrap().is_librarian());
        let plain = mint("k", &member("alice"), Role::Member, Duration::from_secs(60)).unwrap();
        assert!(v.verify(&plain).unwrap_err().message().contains("`aud`"));
        let service = ServiceToken::new("k", "rental-svc", r.scope.clone()).unwrap();
        let bearer = service.bearer();
        let caller = v.verify(bearer.strip_prefix("Bearer ").unwrap()).unwrap();
        assert_eq!(caller.role, Role::Service);
    }

    #[test]
    fn settings_parse_into_their_types() {
        assert_eq!("".parse::<Expected>().unwrap().get(), None);
        assert_eq!(" api ".parse::<Expected>().unwrap().get(), Some("api"));
        assert!("two words".parse::<Expected>().is_err());
        assert_eq!("0s".parse::<Leeway>().unwrap().get(), Duration::ZERO);
        assert_eq!(
            "2m".parse::<Leeway>().unwrap().get(),
            Duration::from_secs(120)
        );
        assert!("1h".parse::<Leeway>().is_err());
        assert!("soon".parse::<Leeway>().is_err());
    }

    #[test]
    fn service_role_needs_the_service_secret() {
        let v = Verifier {
            member_keys: MemberKeys::Secret(DecodingKey::from_secret(b"members")),
            service_key: DecodingKey::from_secret(b"services"),
            rules: TokenRules::default(),
        };
        let as_member_key = mint(
            "members",
            &member("x"),
            Role::Service,
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(v.verify(&as_member_key).is_err());
        let good = mint(
            "services",
            &member("rental-svc"),
            Role::Service,
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(v.verify(&good).unwrap().role, Role::Service);
    }

    #[test]
    fn members_see_only_themselves() {
        let alice = Caller {
            member: member("alice"),
            role: Role::Member,
            valid_until: SystemTime::now(),
        };
        assert_eq!(alice.subject("").unwrap().as_str(), "alice");
        assert_eq!(
            alice.subject("bob").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            alice.subject("b b").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let lib = Caller {
            member: member("lib"),
            role: Role::Librarian,
            valid_until: SystemTime::now(),
        };
        assert_eq!(lib.subject("bob").unwrap().as_str(), "bob");
        assert!(alice.require_service().is_err());
    }
}
