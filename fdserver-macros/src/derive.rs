//! `#[derive(WireError)]`: an error enum or struct that travels as the error reply
//! `["error", code, text, fields...]` and is rebuilt on the client (see `fdserver::WireError`).

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitStr};

use crate::errors::Errors;

/// Error kinds fdserver itself sends: a variant may not use them as its code.
const RESERVED: &[&str] = &[
    "ok",
    "unknown_message",
    "bad_arguments",
    "failed",
    "panicked",
    "protocol",
    "initialize",
    "io",
];

struct Variant {
    /// `Self::Name` or `Self` (for a struct).
    path: TokenStream,
    /// The variant's (or struct's) name, for messages.
    name: String,
    /// Whether an earlier variant has the same code (then no decoding arm of its own).
    duplicate: bool,
    code: String,
    code_span: Span,
    fields: Fields,
}

pub fn run(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error(),
    };
    let mut errs = Errors::default();
    let name = &input.ident;
    if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
        errs.spanned(
            &input.generics,
            "`#[derive(WireError)]` does not support generic types: the client rebuilds one \
             concrete error type from the reply",
        );
        return errs.to_compile_errors();
    }
    let mut variants = Vec::new();
    match &input.data {
        Data::Enum(e) => {
            if e.variants.is_empty() {
                errs.spanned(name, "`#[derive(WireError)]` needs at least one variant");
            }
            for v in &e.variants {
                let ident = &v.ident;
                let (code, code_span) = code_of(&v.attrs, ident, &mut errs);
                variants.push(Variant {
                    path: quote!(Self::#ident),
                    name: ident.to_string(),
                    duplicate: false,
                    code,
                    code_span,
                    fields: v.fields.clone(),
                });
            }
        }
        Data::Struct(s) => {
            let (code, code_span) = code_of(&input.attrs, name, &mut errs);
            variants.push(Variant {
                path: quote!(Self),
                name: name.to_string(),
                duplicate: false,
                code,
                code_span,
                fields: s.fields.clone(),
            });
        }
        Data::Union(u) => {
            errs.spanned(
                u.union_token,
                "`#[derive(WireError)]` works on enums and structs, not unions",
            );
            return errs.to_compile_errors();
        }
    }
    if let Data::Enum(_) = &input.data {
        for attr in input
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("wire_error"))
        {
            errs.spanned(
                attr,
                "on an enum, put `#[wire_error(code = \"...\")]` on a variant",
            );
        }
    }
    for i in 0..variants.len() {
        let v = &variants[i];
        if let Some(first) = variants[..i].iter().find(|w| w.code == v.code) {
            errs.at(
                v.code_span,
                format_args!(
                    "`{}` and `{}` both travel as the code \"{}\"; give one of them another \
                     code with `#[wire_error(code = \"...\")]`",
                    first.name, v.name, v.code
                ),
            );
            variants[i].duplicate = true;
        }
    }
    // Every field travels as one element: checked here, at compile time, per field type.
    let field_checks = variants.iter().flat_map(|v| v.fields.iter()).map(|f| {
        let ty = &f.ty;
        quote_spanned! {ty.span()=>
            const _: () = ::fdserver::__private::wire_error_field_is_inline(
                <#ty as ::fdserver::args::ToArg>::FORM,
            );
        }
    });

    let to_arms = variants.iter().map(|v| {
        let path = &v.path;
        let code = LitStr::new(&v.code, v.code_span);
        let bindings: Vec<Ident> = (0..v.fields.len())
            .map(|i| format_ident!("__fdserver_f{}", i))
            .collect();
        let pattern = pattern(path, &v.fields, &bindings);
        let details = v.fields.iter().zip(&bindings).map(|(f, b)| {
            let ty = &f.ty;
            quote_spanned!(ty.span()=> ::fdserver::__private::wire_error_detail::<#ty>(#b))
        });
        quote! {
            #pattern => ::fdserver::__private::wire_error_reply(
                #code,
                self,
                ::std::vec![#(#details),*],
            ),
        }
    });
    let from_arms = variants.iter().filter(|v| !v.duplicate).map(|v| {
        let path = &v.path;
        let code = LitStr::new(&v.code, v.code_span);
        let n = v.fields.len();
        let takes: Vec<TokenStream> = v
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let ty = &f.ty;
                let what = match &f.ident {
                    Some(id) => format!("field `{id}`"),
                    None => format!("field {i}"),
                };
                quote_spanned!(ty.span()=>
                    ::fdserver::__private::wire_error_field::<#ty>(__fdserver_remote, #i, #what)?)
            })
            .collect();
        let build = match &v.fields {
            Fields::Named(named) => {
                let names = named.named.iter().map(|f| f.ident.as_ref().expect("named"));
                quote!(#path { #(#names: #takes),* })
            }
            Fields::Unnamed(_) => quote!(#path(#(#takes),*)),
            Fields::Unit => quote!(#path),
        };
        quote! {
            #code => ::core::option::Option::Some((|| {
                ::fdserver::__private::wire_error_count(__fdserver_remote, #n)?;
                ::core::result::Result::Ok(#build)
            })()),
        }
    });
    let errors = errs.to_compile_errors();
    quote! {
        #errors
        #(#field_checks)*
        #[automatically_derived]
        impl ::fdserver::WireError for #name {
            fn to_remote(&self) -> ::fdserver::RemoteError {
                match self {
                    #(#to_arms)*
                }
            }

            fn from_remote(
                __fdserver_remote: &::fdserver::RemoteError,
            ) -> ::core::option::Option<
                ::core::result::Result<Self, ::fdserver::args::ArgError>,
            > {
                match __fdserver_remote.kind().as_str() {
                    #(#from_arms)*
                    _ => ::core::option::Option::None,
                }
            }
        }
    }
}

fn pattern(path: &TokenStream, fields: &Fields, bindings: &[Ident]) -> TokenStream {
    match fields {
        Fields::Named(named) => {
            let names = named.named.iter().map(|f| f.ident.as_ref().expect("named"));
            quote!(#path { #(#names: #bindings),* })
        }
        Fields::Unnamed(_) => quote!(#path(#(#bindings),*)),
        Fields::Unit => quote!(#path),
    }
}

/// The code of a variant (or struct): `#[wire_error(code = "...")]`, else its name in snake case.
fn code_of(attrs: &[syn::Attribute], ident: &Ident, errs: &mut Errors) -> (String, Span) {
    let mut code = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("wire_error")) {
        let r = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("code") {
                let lit: LitStr = meta.value()?.parse()?;
                code = Some((lit.value(), lit.span()));
                Ok(())
            } else {
                Err(meta.error("unknown `wire_error` key; expected `code = \"...\"`"))
            }
        });
        if let Err(e) = r {
            errs.push(e);
        }
    }
    let (code, span) = code.unwrap_or_else(|| (snake_case(&ident.to_string()), ident.span()));
    if code.is_empty() || code.contains('\0') {
        errs.at(
            span,
            "an error code must be non-empty and cannot contain a NUL byte",
        );
    } else if RESERVED.contains(&code.as_str()) {
        errs.at(
            span,
            format_args!(
                "\"{code}\" is an error kind fdserver itself sends ({}), so the client could not \
                 tell them apart; give this one another code with `#[wire_error(code = \"...\")]`",
                RESERVED.join(", ")
            ),
        );
    }
    (code, span)
}

/// `InsufficientFunds` → `insufficient_funds`, `IOError` → `io_error`.
fn snake_case(name: &str) -> String {
    let name = name.strip_prefix("r#").unwrap_or(name);
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev_lower = i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_numeric());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let prev_upper = i > 0 && chars[i - 1].is_uppercase();
            if i > 0 && (prev_lower || (prev_upper && next_lower)) && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn snake_case() {
        for (from, to) in [
            ("InsufficientFunds", "insufficient_funds"),
            ("NotFound", "not_found"),
            ("IOError", "io_error"),
            ("Frozen", "frozen"),
            ("Http2Error", "http2_error"),
            ("already_snake", "already_snake"),
        ] {
            assert_eq!(super::snake_case(from), to);
        }
    }
}
