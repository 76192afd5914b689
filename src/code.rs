//! Every error code a client can see: GraphQL `extensions.code`, `instance { error { code } }`,
//! the `code` of failure events, the JSON of plain HTTP refusals. Clients branch on these
//! strings, so they never change; a new failure gets a new code here.

macro_rules! codes {
    ($($name:ident = $text:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Code {
            $($name,)*
        }

        impl Code {
            /// Every code, for documentation and tests.
            #[cfg(test)]
            pub(crate) const ALL: &[Code] = &[$(Code::$name,)*];

            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $(Code::$name => $text,)*
                }
            }
        }
    };
}

codes! {
    AlreadyAtVersion = "ALREADY_AT_VERSION",
    ArchiveInvalid = "ARCHIVE_INVALID",
    ArchiveTooLarge = "ARCHIVE_TOO_LARGE",
    BadRequest = "BAD_REQUEST",
    BadSignature = "BAD_SIGNATURE",
    BinaryNotInArchive = "BINARY_NOT_IN_ARCHIVE",
    BodyTooLarge = "BODY_TOO_LARGE",
    CatalogueChanged = "CATALOGUE_CHANGED",
    CatalogueRefused = "CATALOGUE_REFUSED",
    ChecksumsInvalid = "CHECKSUMS_INVALID",
    ChecksumsUnavailable = "CHECKSUMS_UNAVAILABLE",
    ChecksumMismatch = "CHECKSUM_MISMATCH",
    ChecksumMissing = "CHECKSUM_MISSING",
    ChecksumNotListed = "CHECKSUM_NOT_LISTED",
    ConfigInvalid = "CONFIG_INVALID",
    CrossOrigin = "CROSS_ORIGIN",
    ConfigRejected = "CONFIG_REJECTED",
    DiskFull = "DISK_FULL",
    DownloadFailed = "DOWNLOAD_FAILED",
    GraphqlParseFailed = "GRAPHQL_PARSE_FAILED",
    GraphqlValidationFailed = "GRAPHQL_VALIDATION_FAILED",
    Injected = "INJECTED",
    Internal = "INTERNAL",
    InvalidDevice = "INVALID_DEVICE",
    InvalidId = "INVALID_ID",
    InvalidName = "INVALID_NAME",
    InvalidSettings = "INVALID_SETTINGS",
    InvalidState = "INVALID_STATE",
    InvalidVersion = "INVALID_VERSION",
    IoError = "IO_ERROR",
    MethodNotAllowed = "METHOD_NOT_ALLOWED",
    NameTaken = "NAME_TAKEN",
    NotAService = "NOT_A_SERVICE",
    NoPackageManager = "NO_PACKAGE_MANAGER",
    NotFound = "NOT_FOUND",
    SubscriptionFailed = "SUBSCRIPTION_FAILED",
    UnknownOutbound = "UNKNOWN_OUTBOUND",
    PackageFailed = "PACKAGE_FAILED",
    PackageNotAllowed = "PACKAGE_NOT_ALLOWED",
    PinMismatch = "PIN_MISMATCH",
    ProvisioningFailed = "PROVISIONING_FAILED",
    QueryTooComplex = "QUERY_TOO_COMPLEX",
    QueryTooDeep = "QUERY_TOO_DEEP",
    RateLimited = "RATE_LIMITED",
    ServiceFailed = "SERVICE_FAILED",
    RoutingFailed = "ROUTING_FAILED",
    RoutingUnsupported = "ROUTING_UNSUPPORTED",
    SignatureUnavailable = "SIGNATURE_UNAVAILABLE",
    StartFailed = "START_FAILED",
    StateError = "STATE_ERROR",
    TooLarge = "TOO_LARGE",
    TooManyConnections = "TOO_MANY_CONNECTIONS",
    TooManySubscriptions = "TOO_MANY_SUBSCRIPTIONS",
    Unauthenticated = "UNAUTHENTICATED",
    UnknownFeature = "UNKNOWN_FEATURE",
    UnknownRouter = "UNKNOWN_ROUTER",
    UnknownVersion = "UNKNOWN_VERSION",
    UnreachableRouter = "UNREACHABLE_ROUTER",
    UnsafeArchive = "UNSAFE_ARCHIVE",
    UnsupportedArch = "UNSUPPORTED_ARCH",
    UpdateFailed = "UPDATE_FAILED",
    UpdateInterrupted = "UPDATE_INTERRUPTED",
    UpstreamRateLimited = "UPSTREAM_RATE_LIMITED",
    VlanPoolExhausted = "VLAN_POOL_EXHAUSTED",
    WrongAbi = "WRONG_ABI",
    WrongArch = "WRONG_ARCH",
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_screaming_snake_case() {
        let mut seen = std::collections::BTreeSet::new();
        for c in Code::ALL {
            let s = c.as_str();
            assert!(
                s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{s}"
            );
            assert!(seen.insert(s), "{s} twice");
        }
    }
}
