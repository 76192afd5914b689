//! Gives the errors async-graphql raises itself (parse, validation, limits) a stable
//! `extensions.code`, like the ones resolvers return, so clients can branch on codes alone.

use crate::code::Code;
use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextValidation,
};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{ServerError, ServerResult, ValidationResult, Variables};
use std::sync::Arc;

pub(crate) struct ErrorCodes;

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodes)
    }
}

fn with_code(mut e: ServerError, code: Code) -> ServerError {
    let ext = e.extensions.get_or_insert_with(Default::default);
    if ext.get("code").is_none() {
        ext.set("code", code.as_str());
    }
    e
}

#[async_trait::async_trait]
impl Extension for ErrorCodes {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        next.run(ctx, query, variables).await.map_err(|e| {
            let code = if e.message.contains("ecursion") {
                Code::QueryTooDeep
            } else {
                Code::GraphqlParseFailed
            };
            with_code(e, code)
        })
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| {
            errors
                .into_iter()
                .map(|e| {
                    let code = if e.message.contains("nested too deep") {
                        Code::QueryTooDeep
                    } else if e.message.contains("too complex") {
                        Code::QueryTooComplex
                    } else {
                        Code::GraphqlValidationFailed
                    };
                    with_code(e, code)
                })
                .collect()
        })
    }
}
