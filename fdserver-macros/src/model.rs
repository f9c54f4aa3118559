//! The model: what the impl block declares (handlers, signal handlers, hooks), built from the
//! syntax with every per-method rule checked here. Cross-method rules live in `check.rs`.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{quote, ToTokens};
use syn::ext::IdentExt;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ImplItem, ImplItemFn, ItemImpl, Pat, PathArguments,
    ReturnType, Signature, Type, Visibility,
};

use crate::attr::{self, HookKind, ImplArgs, SignalSpec};
use crate::errors::Errors;

pub struct Server {
    /// The type the impl block is for.
    pub self_ty: Type,
    /// Its name (last path segment), for messages and docs.
    pub self_name: Ident,
    pub client: Ident,
    pub client_vis: Visibility,
    /// The typed pool: `{Server}Pool`.
    pub pool: Ident,
    /// With fdserver's `tokio` feature: `{Server}AsyncClient` and `{Server}AsyncPool`.
    pub async_client: Ident,
    pub async_pool: Ident,
    pub handlers: Vec<Handler>,
    pub signal_handlers: Vec<SignalHandler>,
    pub hooks: Vec<Hook>,
    /// Every method name in the impl block (to detect a clash with the generated `start`).
    pub method_names: Vec<Ident>,
    /// Whether to generate the inherent `start` (not when the user has one).
    pub gen_start: bool,
}

pub struct Handler {
    pub ident: Ident,
    /// The message name on the wire.
    pub wire: String,
    /// Where the message name comes from (the `name = "..."` literal or the method name).
    pub wire_span: Span,
    pub cfgs: Vec<Attribute>,
    pub docs: Vec<Attribute>,
    pub args: Vec<HandlerArg>,
    /// The handler's return type (`()` when it has none).
    pub ret: Type,
    /// What the client stub returns inside `Result<_, ...>`.
    pub client_ret: Type,
    /// `Some(E)` for a `typed_errors` handler returning `Result<T, E>`: the stub returns
    /// `Result<T, fdserver::CallError<E>>` (else `Result<T, fdserver::Error>`).
    pub client_err: Option<Type>,
    /// `#[fdserver(idempotent)]`: the typed pool retries a call that failed with its server.
    pub idempotent: bool,
    /// Set by `check` when a cross-method rule fails; such handlers are not generated.
    pub valid: bool,
}

impl Handler {
    /// The parameters the client sends (all but the context), in order.
    pub fn values(&self) -> impl Iterator<Item = &ValueParam> {
        self.args.iter().filter_map(|a| match a {
            HandlerArg::Value(v) => Some(&**v),
            HandlerArg::Ctx => None,
        })
    }
}

pub enum HandlerArg {
    /// `&mut fdserver::Context<'_>`: passed by the server, not sent by the client.
    Ctx,
    Value(Box<ValueParam>),
}

pub struct ValueParam {
    pub ident: Ident,
    pub ty: Type,
    pub client: ClientTy,
}

/// What a client stub takes for a parameter.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ClientTy {
    /// The handler's own type, by value (`&str`, `&[u8]`, `u32`, ...).
    Same,
    /// `&str` for `String`.
    Str,
    /// `&[u8]` for `Vec<u8>`.
    Bytes,
    /// `impl AsRef<Path>` for `PathBuf` and `&Path`.
    Path,
    /// `impl AsRef<OsStr>` for `OsString` and `&OsStr`.
    OsStr,
    /// `&[impl AsRef<str>]` for `Vec<String>` and `Vec<&str>`.
    ListStr,
    /// `&[impl AsRef<Path>]` for `Vec<PathBuf>` and `Vec<&Path>`.
    ListPath,
    /// `&[impl AsRef<OsStr>]` for `Vec<OsString>` and `Vec<&OsStr>`.
    ListOsStr,
    /// `&[T]` for any other `Vec<T>`.
    List,
    /// `&T` for `Json<T>`.
    Json,
    /// `impl AsFd` for descriptor types.
    Fd,
    /// `Option<&str>` for `Option<String>`.
    OptStr,
    /// `Option<&Path>` for `Option<PathBuf>`.
    OptPath,
    /// `Option<&OsStr>` for `Option<OsString>`.
    OptOsStr,
}

pub struct SignalHandler {
    pub ident: Ident,
    pub cfgs: Vec<Attribute>,
    pub signals: Vec<SignalSpec>,
    /// Resolved by `check`: the `fdserver::Signal` variant names.
    pub variants: Vec<Ident>,
    pub args: Vec<SignalArg>,
    pub valid: bool,
}

pub enum SignalArg {
    Ctx,
    Signal,
}

pub struct Hook {
    pub kind: HookKind,
    pub ident: Ident,
    pub attr_span: Span,
    pub cfgs: Vec<Attribute>,
    /// The return type (for `initialize`, whose result is converted).
    pub ret: Type,
    pub valid: bool,
}

/// Descriptor types the client stub takes as `impl AsFd`.
pub const FD_TYPES: &[&str] = &[
    "OwnedFd",
    "File",
    "UnixStream",
    "UnixListener",
    "UnixDatagram",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
];

/// Builds the model, stripping the helper attributes from `item`. Returns `None` when the impl
/// block itself cannot carry a server (the errors say why).
pub fn build(item: &mut ItemImpl, args: ImplArgs, errs: &mut Errors) -> Option<Server> {
    // Strip helper attributes first, whatever else is wrong, so the impl can always be re-emitted.
    let mut methods = Vec::new();
    for impl_item in &mut item.items {
        match impl_item {
            ImplItem::Fn(f) => {
                let attrs = attr::take_method_attrs(&mut f.attrs, errs);
                methods.push((attrs, f.clone()));
            }
            ImplItem::Const(c) => attr::reject_on_item(&mut c.attrs, errs),
            ImplItem::Type(t) => attr::reject_on_item(&mut t.attrs, errs),
            ImplItem::Macro(m) => attr::reject_on_item(&mut m.attrs, errs),
            _ => {}
        }
    }

    if let Some((_, path, _)) = &item.trait_ {
        errs.spanned(
            path,
            "`#[fdserver]` goes on an inherent impl block (`impl MyServer { ... }`), not on a trait impl",
        );
        return None;
    }
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errs.spanned(
            &item.generics,
            "`#[fdserver]` does not support generic impl blocks: the generated client and \
             `Server` impl need one concrete server type (wrap it, or write `impl Server` by hand)",
        );
        return None;
    }
    let self_name = match &*item.self_ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last()?.ident.clone(),
        other => {
            errs.spanned(
                other,
                "`#[fdserver]` needs a named server type (`impl MyServer { ... }`)",
            );
            return None;
        }
    };

    let client = args
        .client
        .unwrap_or_else(|| Ident::new(&format!("{}Client", self_name.unraw()), Span::call_site()));
    let client_vis = args.client_vis.unwrap_or_else(|| syn::parse_quote!(pub));
    let pool = Ident::new(&format!("{}Pool", self_name.unraw()), Span::call_site());
    let async_client = Ident::new(
        &format!("{}AsyncClient", self_name.unraw()),
        Span::call_site(),
    );
    let async_pool = Ident::new(
        &format!("{}AsyncPool", self_name.unraw()),
        Span::call_site(),
    );

    let mut server = Server {
        self_ty: (*item.self_ty).clone(),
        self_name,
        pool,
        async_client,
        async_pool,
        client,
        client_vis,
        handlers: Vec::new(),
        signal_handlers: Vec::new(),
        hooks: Vec::new(),
        method_names: Vec::new(),
        gen_start: true,
    };

    for (attrs, f) in methods {
        server.method_names.push(f.sig.ident.clone());
        if attrs.skip.is_some() {
            continue;
        }
        if let Some(span) = attrs.typed_errors {
            if !attrs.signals.is_empty() || attrs.hook.is_some() {
                errs.at(
                    span,
                    "`typed_errors` applies to handlers (their errors travel back to the client); \
                     signal handlers and hooks have no client to reply to",
                );
            }
        }
        if let Some(span) = attrs.idempotent {
            if !attrs.signals.is_empty() || attrs.hook.is_some() {
                errs.at(
                    span,
                    "`idempotent` applies to handlers (it lets a pool repeat a call on another \
                     server); signal handlers and hooks are not called by clients",
                );
            }
        }
        if !attrs.signals.is_empty() {
            if let Some(s) = signal_handler(&f, attrs.signals, errs) {
                server.signal_handlers.push(s);
            }
        } else if let Some((kind, span)) = attrs.hook {
            if let Some(h) = hook(&f, kind, span, errs) {
                server.hooks.push(h);
            }
        } else if f.sig.receiver().is_some() {
            let typed = args.typed_errors || attrs.typed_errors.is_some();
            let idempotent = attrs.idempotent.is_some();
            if let Some(mut h) = handler(&f, attrs.name, typed, errs) {
                h.idempotent = idempotent;
                server.handlers.push(h);
            }
        } else if attrs.first.is_some() {
            errs.at(
                f.sig.ident.span(),
                format_args!(
                    "`{}` has no `self` receiver, so it is not a handler: give it `&mut self` or \
                     `&self`, or remove the `#[fdserver]` attribute",
                    f.sig.ident
                ),
            );
        } else if !is_constructor(&f.sig, &server.self_name) {
            // Without a receiver it would silently not be a handler, and the user would only
            // see "no method named `add`" at the call site.
            errs.at(f.sig.ident.span(), no_receiver_message(&f.sig));
        }
    }
    Some(server)
}

/// Whether a function without a receiver is clearly an associated function rather than a
/// handler that lacks its `self`: its return type names `Self` or the server type
/// (`fn new() -> Self`, `fn open(path: PathBuf) -> io::Result<MyServer>`). A handler could not
/// return those anyway (the client has no server value to return).
fn is_constructor(sig: &Signature, self_name: &Ident) -> bool {
    fn names(tokens: TokenStream, self_name: &Ident) -> bool {
        tokens.into_iter().any(|tt| match tt {
            TokenTree::Ident(i) => i == "Self" || i == *self_name,
            TokenTree::Group(g) => names(g.stream(), self_name),
            _ => false,
        })
    }
    match &sig.output {
        ReturnType::Default => false,
        ReturnType::Type(_, ty) => names(ty.to_token_stream(), self_name),
    }
}

/// The error for a function without a receiver, with the signature it probably meant.
fn no_receiver_message(sig: &Signature) -> String {
    let name = &sig.ident;
    let mut params = vec!["&mut self".to_owned()];
    for input in &sig.inputs {
        if let FnArg::Typed(pt) = input {
            params.push(format!("{}: {}", pt.pat.to_token_stream(), pretty(&pt.ty)));
        }
    }
    let ret = match &sig.output {
        ReturnType::Default => String::new(),
        ReturnType::Type(_, ty) => format!(" -> {}", pretty(ty)),
    };
    format!(
        "`{name}` has no `self` receiver, so it cannot be a handler and its client would have no \
         `{name}` method\n\
         help: to make it a handler, take `&mut self` (or `&self`): `fn {name}({}){ret}`\n\
         help: to keep it an associated function, mark it `#[fdserver(skip)]` (functions that \
         return `Self` are left alone without one)",
        params.join(", ")
    )
}

fn cfgs(f: &ImplItemFn) -> Vec<Attribute> {
    f.attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .cloned()
        .collect()
}

/// Attributes copied onto the client stub: docs, `deprecated` (callers of the stub are warned),
/// and `allow`s (a lint the user allowed on a handler, like `clippy::too_many_arguments`,
/// applies to its stub too).
fn docs(f: &ImplItemFn) -> Vec<Attribute> {
    f.attrs
        .iter()
        .filter(|a| {
            let p = a.path();
            p.is_ident("doc") || p.is_ident("allow") || p.is_ident("deprecated")
        })
        .cloned()
        .collect()
}

/// Rules shared by handlers, signal handlers and hooks: a plain, non-generic, synchronous
/// method with a `&mut self` or `&self` receiver.
fn check_shape(sig: &Signature, what: &str, errs: &mut Errors) -> bool {
    let mut ok = true;
    let name = &sig.ident;
    if let Some(token) = &sig.asyncness {
        errs.spanned(
            token,
            format_args!(
                "{what} `{name}` cannot be `async`: the server loop runs one handler at a time, \
                 to completion; make it a plain `fn` (start threads in an `initialize` hook if \
                 you need concurrency)"
            ),
        );
        ok = false;
    }
    if let Some(token) = &sig.unsafety {
        errs.spanned(
            token,
            format_args!("{what} `{name}` cannot be `unsafe`: the generated code calls it"),
        );
        ok = false;
    }
    if let Some(abi) = &sig.abi {
        errs.spanned(
            abi,
            format_args!("{what} `{name}` cannot have an `extern` ABI"),
        );
        ok = false;
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let tokens = if sig.generics.params.is_empty() {
            sig.generics.where_clause.to_token_stream()
        } else {
            sig.generics.to_token_stream()
        };
        errs.spanned(
            tokens,
            format_args!(
                "{what} `{name}` cannot be generic: every parameter needs one concrete type, \
                 which decides how it travels on the wire and what the client stub takes"
            ),
        );
        ok = false;
    }
    if let Some(v) = &sig.variadic {
        errs.spanned(v, format_args!("{what} `{name}` cannot be variadic"));
        ok = false;
    }
    match sig.receiver() {
        None => {
            errs.spanned(
                name,
                format_args!("{what} `{name}` needs a `&mut self` or `&self` receiver"),
            );
            ok = false;
        }
        Some(r) => {
            let by_ref = if r.colon_token.is_some() {
                matches!(&*r.ty, Type::Reference(t) if is_self(&t.elem))
            } else {
                r.reference.is_some()
            };
            if !by_ref {
                let how = if r.colon_token.is_some() {
                    format!("`self: {}`", pretty(&r.ty))
                } else {
                    "`self` by value".to_owned()
                };
                errs.spanned(
                    r,
                    format_args!(
                        "{what} `{name}` takes {how}; it must take `&mut self` or `&self`, \
                         because the server lives on after each call (mark the method \
                         `#[fdserver(skip)]` if it is not meant to be a handler)"
                    ),
                );
                ok = false;
            }
        }
    }
    ok
}

/// A type as a person would write it (token streams print `Box < Self >`).
fn pretty(ty: &Type) -> String {
    let text = ty.to_token_stream().to_string();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ' ' {
            let prev = out.chars().last();
            let next = chars.peek().copied();
            let tight_after = matches!(prev, Some('<' | '&' | '(' | '[' | '\''));
            let tight_before = matches!(next, Some('<' | '>' | ',' | ')' | ']'));
            if tight_after || tight_before {
                continue;
            }
        }
        out.push(c);
    }
    out
}

fn is_self(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p.qself.is_none() && p.path.is_ident("Self"),
        Type::Paren(p) => is_self(&p.elem),
        Type::Group(g) => is_self(&g.elem),
        _ => false,
    }
}

fn strip(ty: &Type) -> &Type {
    match ty {
        Type::Paren(p) => strip(&p.elem),
        Type::Group(g) => strip(&g.elem),
        other => other,
    }
}

/// The last segment of a plain path type.
fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match strip(ty) {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last(),
        _ => None,
    }
}

/// The type arguments of a path segment.
fn type_args(seg: &syn::PathSegment) -> Vec<&Type> {
    match &seg.arguments {
        PathArguments::AngleBracketed(a) => a
            .args
            .iter()
            .filter_map(|g| match g {
                GenericArgument::Type(t) => Some(t),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `&mut Context<'_>` (any path ending in `Context`): `Some(true)`; `&Context`: `Some(false)`.
fn context_param(ty: &Type) -> Option<bool> {
    match strip(ty) {
        Type::Reference(r) => {
            let seg = last_segment(&r.elem)?;
            (seg.ident == "Context").then_some(r.mutability.is_some())
        }
        _ => None,
    }
}

/// A descriptor the server keeps, returned borrowed: `BorrowedFd<'_>` (any lifetime), or a
/// shared reference to one of the descriptor types (`&File`, `&OwnedFd`, ...). Returns what the
/// client receives in its place: `OwnedFd`, or the referenced type.
fn borrowed_fd_return(ty: &Type) -> Option<Type> {
    match strip(ty) {
        Type::Reference(r) if r.mutability.is_none() => {
            let seg = last_segment(&r.elem)?;
            let name = seg.ident.to_string();
            (matches!(seg.arguments, PathArguments::None) && FD_TYPES.contains(&name.as_str()))
                .then(|| (*r.elem).clone())
        }
        Type::Path(_) => {
            let seg = last_segment(ty)?;
            (seg.ident == "BorrowedFd").then(|| syn::parse_quote!(::std::os::fd::OwnedFd))
        }
        _ => None,
    }
}

fn find_self(tokens: TokenStream) -> Option<Span> {
    for tt in tokens {
        match tt {
            TokenTree::Ident(i) if i == "Self" => return Some(i.span()),
            TokenTree::Group(g) => {
                if let Some(s) = find_self(g.stream()) {
                    return Some(s);
                }
            }
            _ => {}
        }
    }
    None
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Param,
    Return,
}

/// Rejects types that can never travel, with a message saying what to use instead. Types that
/// pass may still lack the traits; the compiler reports those on the type.
fn check_type(ty: &Type, role: Role, tuple_ok: bool) -> syn::Result<()> {
    if let Some(span) = find_self(ty.to_token_stream()) {
        return Err(syn::Error::new(
            span,
            "`Self` cannot appear in a handler's parameter or return types: the client stub is \
             generated on another type, where `Self` means the client; write the type's name",
        ));
    }
    let (what, owned_hint) = match role {
        Role::Param => (
            "a handler parameter",
            "the borrowed parameters are `&str`, `&[u8]`, `&Path` and `&OsStr` (they borrow \
             from the received message); take other types by value (`u32`, `File` or `OwnedFd` \
             instead of a borrowed descriptor, `String` instead of `&String`)",
        ),
        Role::Return => (
            "a handler's return value",
            "handlers must return owned values (the reply is sent after the handler returns): \
             `String` instead of `&str`, `Vec<u8>` instead of `&[u8]`, `PathBuf` instead of \
             `&Path`, `OsString` instead of `&OsStr` (a descriptor the server keeps may be \
             returned borrowed from `self`: `&File`, `&OwnedFd`, `BorrowedFd<'_>`, ...)",
        ),
    };
    if role == Role::Return && borrowed_fd_return(ty).is_some() {
        return Ok(());
    }
    if let (Role::Param, Type::Reference(r)) = (role, strip(ty)) {
        if r.mutability.is_none() && borrowed_kind(&r.elem).is_some() {
            return match &r.lifetime {
                Some(l) if l.ident != "_" => Err(syn::Error::new_spanned(
                    r,
                    format_args!(
                        "write `&{}` without a lifetime: a borrowed parameter borrows from the \
                         received message, for the duration of the call",
                        pretty(&r.elem)
                    ),
                )),
                _ => Ok(()),
            };
        }
    }
    match strip(ty) {
        Type::Path(p) => {
            if let Some(seg) = p.path.segments.last() {
                let args = type_args(seg);
                if seg.ident == "Option" && args.len() == 1 {
                    let inner = match client_ty(args[0]) {
                        ClientTy::Fd => Some(("a descriptor", "use two handlers")),
                        ClientTy::Bytes => Some((
                            "a byte payload (`Vec<u8>`)",
                            "send an empty `Vec<u8>`, or use two handlers",
                        )),
                        ClientTy::ListStr
                        | ClientTy::ListPath
                        | ClientTy::ListOsStr
                        | ClientTy::List => Some(("a list (`Vec<T>`)", "send an empty list")),
                        ClientTy::Json => Some(("a JSON value", "use `Json<Option<T>>`")),
                        _ if is_borrowed_bytes(args[0]) => Some((
                            "a byte payload (`&[u8]`)",
                            "send an empty slice, or use two handlers",
                        )),
                        _ => None,
                    };
                    if let Some((inner, instead)) = inner {
                        return Err(syn::Error::new_spanned(
                            ty,
                            format_args!(
                                "`Option` cannot hold {inner}: only values that travel as one \
                                 array element can be optional ({instead})"
                            ),
                        ));
                    }
                }
            }
            for seg in &p.path.segments {
                let args = type_args(seg);
                if seg.ident == "Json" {
                    // Whatever serde carries: checked by its traits, not here.
                    continue;
                }
                if role == Role::Return && seg.ident == "Result" {
                    // Only the `T` of `Result<T, E>` travels; `E` is displayed.
                    if let Some(ok) = args.first() {
                        check_type(ok, role, tuple_ok)?;
                    }
                } else {
                    for arg in args {
                        check_type(arg, role, false)?;
                    }
                }
            }
            Ok(())
        }
        Type::Tuple(t) if role == Role::Return && tuple_ok => {
            for elem in &t.elems {
                check_type(elem, role, false)?;
            }
            Ok(())
        }
        Type::Tuple(t) if role == Role::Return => Err(syn::Error::new_spanned(
            t,
            "tuples cannot be nested in a handler's return value: flatten them into one tuple",
        )),
        Type::Tuple(t) => Err(syn::Error::new_spanned(
            t,
            "a tuple cannot be a handler parameter: take one parameter per value",
        )),
        Type::Reference(r)
            if role == Role::Return
                && r.mutability.is_some()
                && borrowed_fd_return(&r.elem).is_none()
                && last_segment(&r.elem)
                    .is_some_and(|seg| FD_TYPES.contains(&seg.ident.to_string().as_str())) =>
        {
            Err(syn::Error::new_spanned(
                r,
                "a descriptor the server keeps is lent with a shared reference (`&File`) or a \
                 `BorrowedFd<'_>`, not `&mut`",
            ))
        }
        Type::Reference(r) => Err(syn::Error::new_spanned(r, owned_hint)),
        Type::ImplTrait(t) => Err(syn::Error::new_spanned(
            t,
            format_args!(
                "`impl Trait` cannot be {what}: the wire form is decided by a concrete type"
            ),
        )),
        Type::TraitObject(t) => Err(syn::Error::new_spanned(
            t,
            format_args!("a trait object cannot be {what}: use a concrete type"),
        )),
        Type::Slice(t) => Err(syn::Error::new_spanned(
            t,
            format_args!("a slice cannot be {what}: use `Vec<u8>` for bytes"),
        )),
        Type::Array(t) => Err(syn::Error::new_spanned(
            t,
            format_args!(
                "an array cannot be {what}: use `Vec<u8>` for bytes, or one value per parameter"
            ),
        )),
        Type::Ptr(t) => Err(syn::Error::new_spanned(
            t,
            format_args!("a raw pointer cannot be {what}: it means nothing in another process"),
        )),
        Type::BareFn(t) => Err(syn::Error::new_spanned(
            t,
            format_args!(
                "a function pointer cannot be {what}: it means nothing in another process"
            ),
        )),
        Type::Never(t) => Err(syn::Error::new_spanned(
            t,
            format_args!("`!` cannot be {what}: a handler must return to reply"),
        )),
        Type::Infer(t) => Err(syn::Error::new_spanned(
            t,
            format_args!("`_` cannot be {what}: write the type"),
        )),
        Type::Macro(_) => Ok(()),
        other => Err(syn::Error::new_spanned(
            other,
            format_args!("this type cannot be {what}"),
        )),
    }
}

/// For `&T` parameters that borrow from the message: `str`, `[u8]`, `Path`, `OsStr`.
fn borrowed_kind(elem: &Type) -> Option<ClientTy> {
    match strip(elem) {
        Type::Slice(s) => last_segment(&s.elem)
            .is_some_and(|seg| seg.ident == "u8" && seg.arguments.is_empty())
            .then_some(ClientTy::Same),
        other => {
            let seg = last_segment(other)?;
            if !seg.arguments.is_empty() {
                return None;
            }
            match seg.ident.to_string().as_str() {
                "str" => Some(ClientTy::Str),
                "Path" => Some(ClientTy::Path),
                "OsStr" => Some(ClientTy::OsStr),
                _ => None,
            }
        }
    }
}

fn is_borrowed_bytes(ty: &Type) -> bool {
    matches!(strip(ty), Type::Reference(r) if matches!(strip(&r.elem), Type::Slice(_)))
}

fn client_ty(ty: &Type) -> ClientTy {
    if let Type::Reference(r) = strip(ty) {
        return match borrowed_kind(&r.elem) {
            Some(ClientTy::Path) => ClientTy::Path,
            Some(ClientTy::OsStr) => ClientTy::OsStr,
            _ => ClientTy::Same,
        };
    }
    let Some(seg) = last_segment(ty) else {
        return ClientTy::Same;
    };
    let args = type_args(seg);
    let bare = matches!(seg.arguments, PathArguments::None);
    let name = seg.ident.to_string();
    match name.as_str() {
        "String" if bare => ClientTy::Str,
        "PathBuf" if bare => ClientTy::Path,
        "OsString" if bare => ClientTy::OsStr,
        n if bare && FD_TYPES.contains(&n) => ClientTy::Fd,
        "Vec" if args.len() == 1 && last_segment(args[0]).is_some_and(|s| s.ident == "u8") => {
            ClientTy::Bytes
        }
        "Vec" if args.len() == 1 => match client_ty(args[0]) {
            ClientTy::Str => ClientTy::ListStr,
            ClientTy::Path => ClientTy::ListPath,
            ClientTy::OsStr => ClientTy::ListOsStr,
            _ if matches!(strip(args[0]), Type::Reference(r) if borrowed_kind(&r.elem) == Some(ClientTy::Str)) => {
                ClientTy::ListStr
            }
            _ => ClientTy::List,
        },
        "Json" if args.len() == 1 => ClientTy::Json,
        "Option" if args.len() == 1 => match client_ty(args[0]) {
            ClientTy::Str => ClientTy::OptStr,
            ClientTy::Path => ClientTy::OptPath,
            ClientTy::OsStr => ClientTy::OptOsStr,
            _ => ClientTy::Same,
        },
        _ => ClientTy::Same,
    }
}

fn return_type(ret: &ReturnType) -> Type {
    match ret {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    }
}

/// What the client stub returns for a handler returning `ret`: the `Ok` type of a `Result`
/// (including aliases named `Result`, such as `io::Result<T>`), else the type itself; with each
/// borrowed descriptor (`BorrowedFd<'_>`, `&File`) as the owned one the client receives.
fn client_ret(ret: &Type) -> Type {
    if let Some(seg) = last_segment(ret) {
        if seg.ident == "Result" {
            return match type_args(seg).first() {
                Some(ok) => client_value(ok),
                None => syn::parse_quote!(<#ret as ::fdserver::args::Reply>::Ok),
            };
        }
    }
    client_value(ret)
}

/// The client's type for a value (or tuple of values) a handler returns.
fn client_value(ty: &Type) -> Type {
    if let Some(owned) = borrowed_fd_return(ty) {
        return owned;
    }
    match strip(ty) {
        Type::Tuple(t) => {
            let elems = t.elems.iter().map(client_value);
            syn::parse_quote!((#(#elems,)*))
        }
        _ => ty.clone(),
    }
}

/// For a `typed_errors` handler: the error type of its `Result` return type, written out when
/// the type is `Result<T, E>`, else `<R as TypedReply>::Error` (for aliases such as
/// `io::Result<T>`). `None` when the return type is not a `Result` (nothing to type).
fn client_err(ret: &Type) -> Option<Type> {
    let seg = last_segment(ret)?;
    if seg.ident != "Result" {
        return None;
    }
    let args = type_args(seg);
    Some(match args.get(1) {
        Some(e) => (*e).clone(),
        None => syn::parse_quote!(<#ret as ::fdserver::args::TypedReply>::Error),
    })
}

fn handler(
    f: &ImplItemFn,
    name: Option<syn::LitStr>,
    typed_errors: bool,
    errs: &mut Errors,
) -> Option<Handler> {
    let mut ok = check_shape(&f.sig, "handler", errs);
    let mut args = Vec::new();
    let mut ctx_seen = false;
    // Names a `_` parameter may not take: the others'.
    let named: Vec<String> = f
        .sig
        .inputs
        .iter()
        .filter_map(|input| match input {
            FnArg::Typed(pt) => match &*pt.pat {
                Pat::Ident(p) => Some(p.ident.unraw().to_string()),
                _ => None,
            },
            FnArg::Receiver(_) => None,
        })
        .collect();
    for input in f.sig.inputs.iter().skip(1) {
        let FnArg::Typed(pt) = input else { continue };
        match context_param(&pt.ty) {
            Some(true) => {
                if ctx_seen {
                    errs.spanned(&pt.ty, "a handler takes at most one context parameter");
                    ok = false;
                }
                ctx_seen = true;
                args.push(HandlerArg::Ctx);
                continue;
            }
            Some(false) => {
                errs.spanned(&pt.ty, "take the context as `&mut fdserver::Context<'_>`");
                ok = false;
                continue;
            }
            None => {}
        }
        let ident = match &*pt.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
            Pat::Wild(w) => {
                // `_: T`: the server ignores the value, but the client still sends it, so its
                // stub needs a name: `argN` (N counts the client's parameters from 1), made
                // unique among the handler's names, and hygienic (resolved at the macro's
                // definition) so it can clash with nothing the user wrote.
                let mut name = format!("arg{}", values_so_far(&args) + 1);
                while named.contains(&name) {
                    name.push('_');
                }
                Ident::new(
                    &name,
                    Span::mixed_site().located_at(w.underscore_token.span),
                )
            }
            other => {
                errs.spanned(
                    other,
                    "handler parameters must be plain names (`name: Type`) or `_: Type`: the \
                     name is used for the client stub's parameter and in error messages",
                );
                ok = false;
                continue;
            }
        };
        if let Err(e) = check_type(&pt.ty, Role::Param, false) {
            errs.push(e);
            ok = false;
            continue;
        }
        args.push(HandlerArg::Value(Box::new(ValueParam {
            ident,
            client: client_ty(&pt.ty),
            ty: (*pt.ty).clone(),
        })));
    }
    let ret = return_type(&f.sig.output);
    if let Err(e) = check_type(&ret, Role::Return, true) {
        errs.push(e);
        ok = false;
    }
    if !ok {
        return None;
    }
    let (wire, wire_span) = match name {
        Some(lit) => (lit.value(), lit.span()),
        None => (f.sig.ident.unraw().to_string(), f.sig.ident.span()),
    };
    Some(Handler {
        ident: f.sig.ident.clone(),
        wire,
        wire_span,
        cfgs: cfgs(f),
        docs: docs(f),
        args,
        client_ret: client_ret(&ret),
        client_err: if typed_errors { client_err(&ret) } else { None },
        idempotent: false,
        ret,
        valid: true,
    })
}

/// How many value parameters (sent by the client) `args` holds.
fn values_so_far(args: &[HandlerArg]) -> usize {
    args.iter()
        .filter(|a| matches!(a, HandlerArg::Value(_)))
        .count()
}

fn signal_handler(
    f: &ImplItemFn,
    signals: Vec<SignalSpec>,
    errs: &mut Errors,
) -> Option<SignalHandler> {
    let mut ok = check_shape(&f.sig, "signal handler", errs);
    let mut args = Vec::new();
    for input in f.sig.inputs.iter().skip(1) {
        let FnArg::Typed(pt) = input else { continue };
        if context_param(&pt.ty) == Some(true) {
            args.push(SignalArg::Ctx);
        } else if last_segment(&pt.ty).is_some_and(|s| s.ident == "Signal") {
            args.push(SignalArg::Signal);
        } else {
            errs.spanned(
                &pt.ty,
                "a signal handler takes `&mut self` and, optionally, \
                 `&mut fdserver::Context<'_>` and/or `fdserver::Signal`",
            );
            ok = false;
        }
    }
    if let ReturnType::Type(_, ty) = &f.sig.output {
        if !matches!(strip(ty), Type::Tuple(t) if t.elems.is_empty()) {
            errs.spanned(
                ty,
                "a signal handler returns nothing: there is no one to reply to (handle errors \
                 inside it, or remember them for a later message)",
            );
            ok = false;
        }
    }
    ok.then(|| SignalHandler {
        ident: f.sig.ident.clone(),
        cfgs: cfgs(f),
        signals,
        variants: Vec::new(),
        args,
        valid: true,
    })
}

fn hook(f: &ImplItemFn, kind: HookKind, attr_span: Span, errs: &mut Errors) -> Option<Hook> {
    let what = format!("`{}` hook", kind.key());
    let mut ok = check_shape(&f.sig, &what, errs);
    let receiver = if kind == HookKind::Sandbox {
        "`&self`"
    } else {
        "`&mut self`"
    };
    if let Some(extra) = f.sig.inputs.iter().nth(1) {
        errs.spanned(
            extra,
            format_args!("the {what} takes no parameters besides {receiver}"),
        );
        ok = false;
    }
    if kind == HookKind::Sandbox {
        let mut_ref = |r: &&syn::Receiver| match (&r.colon_token, &*r.ty) {
            (Some(_), Type::Reference(t)) => t.mutability.is_some(),
            (Some(_), _) => false,
            (None, _) => r.reference.is_some() && r.mutability.is_some(),
        };
        if let Some(r) = f.sig.receiver().filter(mut_ref) {
            errs.spanned(
                r,
                "the `sandbox` hook takes `&self`: it only describes the sandbox, and runs in \
                 the parent before each fork",
            );
            ok = false;
        }
    }
    let ret = match (&f.sig.output, kind) {
        // A missing return type is reported at the method's name.
        (ReturnType::Default, HookKind::Sandbox) => {
            syn::parse_quote_spanned!(f.sig.ident.span()=> ())
        }
        (output, _) => return_type(output),
    };
    if !matches!(kind, HookKind::Initialize | HookKind::Sandbox)
        && !matches!(strip(&ret), Type::Tuple(t) if t.elems.is_empty())
    {
        errs.spanned(
            &ret,
            format_args!(
                "the {what} returns nothing (only `initialize` may fail, by returning \
                 `Result<(), E>`)"
            ),
        );
        ok = false;
    }
    ok.then(|| Hook {
        kind,
        ident: f.sig.ident.clone(),
        attr_span,
        cfgs: cfgs(f),
        ret,
        valid: true,
    })
}

impl ClientTy {
    /// The stub's parameter type for a handler parameter of type `ty`.
    pub fn stub_type(self, ty: &Type) -> TokenStream {
        let inner = || {
            last_segment(ty)
                .and_then(|seg| type_args(seg).first().map(|t| (*t).clone()))
                .unwrap_or_else(|| ty.clone())
        };
        match self {
            ClientTy::Same => ty.to_token_stream(),
            ClientTy::Str => quote!(&str),
            ClientTy::Bytes => quote!(&[u8]),
            ClientTy::Path => quote!(impl ::core::convert::AsRef<::std::path::Path>),
            ClientTy::OsStr => quote!(impl ::core::convert::AsRef<::std::ffi::OsStr>),
            ClientTy::Fd => quote!(impl ::std::os::fd::AsFd),
            ClientTy::OptStr => quote!(::core::option::Option<&str>),
            ClientTy::OptPath => quote!(::core::option::Option<&::std::path::Path>),
            ClientTy::OptOsStr => quote!(::core::option::Option<&::std::ffi::OsStr>),
            ClientTy::ListStr => quote!(&[impl ::core::convert::AsRef<str>]),
            ClientTy::ListPath => quote!(&[impl ::core::convert::AsRef<::std::path::Path>]),
            ClientTy::ListOsStr => quote!(&[impl ::core::convert::AsRef<::std::ffi::OsStr>]),
            ClientTy::List => {
                let inner = inner();
                quote!(&[#inner])
            }
            ClientTy::Json => {
                let inner = inner();
                quote!(&#inner)
            }
        }
    }

    /// A statement turning the stub's parameter into something that implements `ToArg`.
    pub fn conversion(self, ident: &Ident) -> TokenStream {
        let list = |target: TokenStream| {
            quote! {
                let #ident = ::fdserver::args::List::new(
                    ::core::iter::Iterator::map(
                        <[_]>::iter(#ident),
                        |__fdserver_item| ::core::convert::AsRef::<#target>::as_ref(__fdserver_item),
                    ),
                );
            }
        };
        match self {
            ClientTy::Path => quote! {
                let #ident: &::std::path::Path =
                    ::core::convert::AsRef::<::std::path::Path>::as_ref(&#ident);
            },
            ClientTy::OsStr => quote! {
                let #ident: &::std::ffi::OsStr =
                    ::core::convert::AsRef::<::std::ffi::OsStr>::as_ref(&#ident);
            },
            ClientTy::Fd => quote! {
                let #ident: ::std::os::fd::BorrowedFd<'_> = ::std::os::fd::AsFd::as_fd(&#ident);
            },
            ClientTy::ListStr => list(quote!(str)),
            ClientTy::ListPath => list(quote!(::std::path::Path)),
            ClientTy::ListOsStr => list(quote!(::std::ffi::OsStr)),
            ClientTy::Json => quote! {
                let #ident = ::fdserver::Json(#ident);
            },
            _ => TokenStream::new(),
        }
    }
}
