//! Parsing `#[fdserver(...)]`: the arguments of the outer attribute on the impl block, and the
//! helper attributes on its methods (which are stripped from the impl that is re-emitted).

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{Attribute, Ident, LitStr, Visibility};

use crate::errors::Errors;

/// Arguments of `#[fdserver(client = "Name", client_vis = "pub(crate)")]` on the impl block.
#[derive(Default)]
pub struct ImplArgs {
    pub client: Option<Ident>,
    pub client_vis: Option<Visibility>,
    /// `typed_errors`: every handler's error travels back as itself (`CallError<E>`).
    pub typed_errors: bool,
}

const IMPL_KEYS: &str = "`client = \"Name\"`, `client_vis = \"pub(crate)\"`, `typed_errors`";

pub fn parse_impl_args(tokens: TokenStream, errs: &mut Errors) -> ImplArgs {
    let mut args = ImplArgs::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("client") {
            if args.client.is_some() {
                return Err(meta.error("duplicate `client` key"));
            }
            let value = meta.value()?;
            args.client = Some(if value.peek(LitStr) {
                value.parse::<LitStr>()?.parse::<Ident>()?
            } else {
                value.parse::<Ident>()?
            });
            Ok(())
        } else if meta.path.is_ident("client_vis") {
            if args.client_vis.is_some() {
                return Err(meta.error("duplicate `client_vis` key"));
            }
            let lit: LitStr = meta.value()?.parse()?;
            args.client_vis = Some(lit.parse::<Visibility>()?);
            Ok(())
        } else if meta.path.is_ident("typed_errors") {
            if args.typed_errors {
                return Err(meta.error("duplicate `typed_errors` key"));
            }
            args.typed_errors = true;
            Ok(())
        } else {
            Err(meta.error(format!(
                "unknown `#[fdserver]` argument `{}`; expected {IMPL_KEYS}",
                path_text(&meta.path)
            )))
        }
    });
    if let Err(e) = parser.parse2(tokens) {
        errs.push(e);
    }
    args
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum HookKind {
    BeforeFork,
    Initialize,
    Finalize,
    Sandbox,
}

impl HookKind {
    pub fn key(self) -> &'static str {
        match self {
            HookKind::BeforeFork => "before_fork",
            HookKind::Initialize => "initialize",
            HookKind::Finalize => "finalize",
            HookKind::Sandbox => "sandbox",
        }
    }
}

/// A signal as written: `signal = "SIGUSR1"` or `signal = SIGUSR1`.
#[derive(Clone)]
pub struct SignalSpec {
    pub name: String,
    pub span: Span,
}

/// What the `#[fdserver(...)]` attributes on one method say.
#[derive(Default)]
pub struct MethodAttrs {
    /// `name = "..."`: the message name.
    pub name: Option<LitStr>,
    /// `skip`: not a handler.
    pub skip: Option<Span>,
    /// `signal = ...` (repeatable): a signal handler.
    pub signals: Vec<SignalSpec>,
    /// `before_fork`, `initialize`, `finalize`: a lifecycle hook.
    pub hook: Option<(HookKind, Span)>,
    /// The first `#[fdserver]` attribute, if any.
    pub first: Option<Span>,
    /// `typed_errors`: this handler's error travels back as itself.
    pub typed_errors: Option<Span>,
    /// `idempotent`: the typed pool may run a failed call of this handler once more, on
    /// another server.
    pub idempotent: Option<Span>,
}

pub const METHOD_KEYS: &str = "`name = \"...\"`, `signal = \"SIGxxx\"`, `skip`, `before_fork`, \
                               `initialize`, `finalize`, `sandbox`, `typed_errors`, `idempotent`";

impl MethodAttrs {
    fn role(&self) -> Option<&'static str> {
        if self.skip.is_some() {
            Some("`skip`")
        } else if self.name.is_some() {
            Some("`name`")
        } else if !self.signals.is_empty() {
            Some("`signal`")
        } else {
            self.hook.map(|(k, _)| match k {
                HookKind::BeforeFork => "`before_fork`",
                HookKind::Initialize => "`initialize`",
                HookKind::Finalize => "`finalize`",
                HookKind::Sandbox => "`sandbox`",
            })
        }
    }
}

/// Removes every `#[fdserver(...)]` attribute from `attrs` and parses them.
pub fn take_method_attrs(attrs: &mut Vec<Attribute>, errs: &mut Errors) -> MethodAttrs {
    let mut out = MethodAttrs::default();
    let mut kept = Vec::with_capacity(attrs.len());
    for attr in attrs.drain(..) {
        if !attr.path().is_ident("fdserver") {
            kept.push(attr);
            continue;
        }
        out.first.get_or_insert(attr.span());
        let result = attr.parse_nested_meta(|meta| {
            let key = path_text(&meta.path);
            let span = meta.path.span();
            // Keys that give the method a role conflict with each other (except repeated `signal`).
            let conflict = |out: &MethodAttrs, this: &str| -> syn::Result<()> {
                match out.role() {
                    Some(role) if role != this || this != "`signal`" => Err(syn::Error::new(
                        span,
                        if role == this {
                            format!("duplicate {this} key")
                        } else {
                            format!("{this} cannot be combined with {role} on the same method")
                        },
                    )),
                    _ => Ok(()),
                }
            };
            match key.as_str() {
                "name" => {
                    conflict(&out, "`name`")?;
                    let lit: LitStr = meta.value()?.parse()?;
                    let value = lit.value();
                    if value.is_empty() {
                        return Err(syn::Error::new(lit.span(), "a message name cannot be empty"));
                    }
                    if value.contains('\0') {
                        return Err(syn::Error::new(
                            lit.span(),
                            "a message name cannot contain a NUL byte (the wire format cannot carry it)",
                        ));
                    }
                    out.name = Some(lit);
                }
                "skip" => {
                    conflict(&out, "`skip`")?;
                    out.skip = Some(span);
                }
                "typed_errors" => {
                    if out.typed_errors.is_some() {
                        return Err(syn::Error::new(span, "duplicate `typed_errors` key"));
                    }
                    out.typed_errors = Some(span);
                }
                "idempotent" => {
                    if out.idempotent.is_some() {
                        return Err(syn::Error::new(span, "duplicate `idempotent` key"));
                    }
                    out.idempotent = Some(span);
                }
                "signal" => {
                    conflict(&out, "`signal`")?;
                    let value = meta.value()?;
                    let spec = if value.peek(LitStr) {
                        let lit: LitStr = value.parse()?;
                        SignalSpec {
                            name: lit.value(),
                            span: lit.span(),
                        }
                    } else {
                        let path: syn::Path = value.parse()?;
                        let last = path.segments.last().expect("a path has a segment");
                        SignalSpec {
                            name: last.ident.to_string(),
                            span: path.span(),
                        }
                    };
                    out.signals.push(spec);
                }
                "before_fork" | "initialize" | "finalize" | "sandbox" => {
                    let kind = match key.as_str() {
                        "before_fork" => HookKind::BeforeFork,
                        "initialize" => HookKind::Initialize,
                        "sandbox" => HookKind::Sandbox,
                        _ => HookKind::Finalize,
                    };
                    conflict(&out, &format!("`{key}`"))?;
                    out.hook = Some((kind, span));
                }
                _ => {
                    let hint = match key.as_str() {
                        "rename" => "; to rename the message use `name = \"...\"`",
                        "initialize_server" | "init" => "; did you mean `initialize`?",
                        "finalize_server" => "; did you mean `finalize`?",
                        "signals" | "on_signal" => "; did you mean `signal = \"SIGxxx\"`?",
                        _ => "",
                    };
                    return Err(meta.error(format!(
                        "unknown `#[fdserver]` key `{key}`; expected one of {METHOD_KEYS}{hint}"
                    )));
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            errs.push(e);
        }
    }
    *attrs = kept;
    out
}

/// Removes `#[fdserver(...)]` attributes from a non-method item, reporting each.
pub fn reject_on_item(attrs: &mut Vec<Attribute>, errs: &mut Errors) {
    attrs.retain(|attr| {
        if attr.path().is_ident("fdserver") {
            errs.spanned(
                attr,
                "`#[fdserver(...)]` only applies to methods of the impl block",
            );
            false
        } else {
            true
        }
    });
}

fn path_text(path: &syn::Path) -> String {
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    segments.join("::")
}
