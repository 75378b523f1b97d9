//! Identity (SPEC §6): every product RPC carries `authorization: Bearer <JWT>`
//! and every service verifies it itself. Members' and librarians' tokens are
//! verified with an HS256 secret or with an identity provider's JWKS; tokens of
//! role `service` only with the service secret that the services share.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::config::CommonArgs;
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

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    exp: u64,
}

/// The verified caller of an RPC, put into the request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub member: MemberId,
    pub role: Role,
}

impl Caller {
    /// The caller of a request that passed the [`Authenticator`].
    pub fn of<T>(req: &Request<T>) -> Result<Caller, Status> {
        req.extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("a bearer token is required"))
    }

    pub fn is_librarian(&self) -> bool {
        self.role == Role::Librarian
    }

    pub fn require_librarian(&self, what: &str) -> Result<(), Status> {
        if self.is_librarian() {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "only a librarian may {what}"
            )))
        }
    }

    pub fn require_service(&self) -> Result<(), Status> {
        if self.role == Role::Service {
            Ok(())
        } else {
            Err(Status::permission_denied(
                "this operation is internal to the lending desk",
            ))
        }
    }

    /// Members act for themselves; librarians (and services) for anyone.
    pub fn may_see(&self, member: &MemberId) -> bool {
        self.role != Role::Member || &self.member == member
    }

    pub fn require_may_see(&self, member: &MemberId, what: &str) -> Result<(), Status> {
        if self.may_see(member) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "this {what} belongs to another member"
            )))
        }
    }

    /// The member a list or page request is about: empty means the caller.
    pub fn subject(&self, requested: &str) -> Result<MemberId, Status> {
        if requested.is_empty() {
            return Ok(self.member.clone());
        }
        let member = MemberId::parse(requested)
            .map_err(|e| Status::invalid_argument(format!("member_id: {e}")))?;
        if !self.may_see(&member) {
            return Err(Status::permission_denied(
                "members may only see their own reservations, rentals and page",
            ));
        }
        Ok(member)
    }
}

enum MemberKeys {
    Secret(DecodingKey),
    Jwks(Vec<(Option<String>, Algorithm, DecodingKey)>),
}

/// Verifies bearer tokens.
pub struct Verifier {
    member_keys: MemberKeys,
    service_key: DecodingKey,
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
        })
    }

    /// A verifier for HS256 tokens signed with one secret (tests, the all-in-one).
    pub fn with_secret(secret: &str) -> Self {
        Self {
            member_keys: MemberKeys::Secret(DecodingKey::from_secret(secret.as_bytes())),
            service_key: DecodingKey::from_secret(secret.as_bytes()),
        }
    }

    pub fn verify(&self, token: &str) -> Result<Caller, Status> {
        let claims = self.verify_claims(token).ok_or_else(|| {
            Status::unauthenticated("the token is invalid or has expired; sign in again")
        })?;
        let member = MemberId::parse(&claims.sub)
            .map_err(|e| Status::unauthenticated(format!("the token's subject: {e}")))?;
        Ok(Caller {
            member,
            role: claims.role,
        })
    }

    fn verify_claims(&self, token: &str) -> Option<Claims> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let hs256 = Validation::new(Algorithm::HS256);
        // A service token is only good with the shared service secret.
        if let Ok(data) = jsonwebtoken::decode::<Claims>(token, &self.service_key, &hs256)
            && data.claims.role == Role::Service
        {
            return Some(data.claims);
        }
        let claims = match &self.member_keys {
            MemberKeys::Secret(key) => {
                jsonwebtoken::decode::<Claims>(token, key, &hs256)
                    .ok()?
                    .claims
            }
            MemberKeys::Jwks(keys) => {
                keys.iter()
                    .filter(|(kid, alg, _)| {
                        *alg == header.alg && (header.kid.is_none() || header.kid == *kid)
                    })
                    .find_map(|(_, alg, key)| {
                        jsonwebtoken::decode::<Claims>(token, key, &Validation::new(*alg)).ok()
                    })?
                    .claims
            }
        };
        (claims.role != Role::Service).then_some(claims)
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
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + ttl.as_secs();
    let claims = Claims {
        sub: member.as_str().to_owned(),
        role,
        exp,
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
    current: std::sync::Mutex<(String, std::time::Instant)>,
}

impl ServiceToken {
    const TTL: Duration = Duration::from_secs(300);

    pub fn new(secret: &str, service_name: &str) -> anyhow::Result<Self> {
        let name = MemberId::parse(service_name).map_err(anyhow::Error::msg)?;
        let token = mint(secret, &name, Role::Service, Self::TTL)?;
        Ok(Self {
            secret: secret.to_owned(),
            name,
            current: std::sync::Mutex::new((token, std::time::Instant::now())),
        })
    }

    /// The `authorization` header value, re-minted well before expiry.
    pub fn bearer(&self) -> String {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.1.elapsed() > Self::TTL / 2
            && let Ok(token) = mint(&self.secret, &self.name, Role::Service, Self::TTL)
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
            .ok_or_else(|| Status::unauthenticated("a bearer token is required"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header must be `Bearer <token>`")
            })?;
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
        let claims = Claims {
            sub: "alice".into(),
            role: Role::Member,
            exp: 1_000_000,
        };
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert!(Verifier::with_secret("k").verify(&t).is_err());
    }

    #[test]
    fn service_role_needs_the_service_secret() {
        let v = Verifier {
            member_keys: MemberKeys::Secret(DecodingKey::from_secret(b"members")),
            service_key: DecodingKey::from_secret(b"services"),
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
        };
        assert_eq!(lib.subject("bob").unwrap().as_str(), "bob");
        assert!(alice.require_service().is_err());
    }
}
