//! Code generation: the `Server` impl (dispatch, signals, hooks), the inherent `start`, and the
//! typed client. Every path is absolute and every local is prefixed `__fdserver_`, so the code
//! works under `#![no_implicit_prelude]` and next to the user's own `Result` alias.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemImpl, LitByteStr, LitStr};

use crate::attr::{self, HookKind};
use crate::check;
use crate::errors::Errors;
use crate::model::{self, Handler, HandlerArg, Server, SignalArg};

/// The whole expansion: the user's impl (helper attributes stripped), the generated items for
/// everything that is valid, and a `compile_error!` for every problem found.
pub fn run(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut errs = Errors::default();
    let mut item: ItemImpl = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(e) => {
            let e = match syn::parse2::<syn::Item>(input.clone()) {
                Ok(other) => syn::Error::new(
                    item_span(&other),
                    "`#[fdserver]` goes on an impl block: `#[fdserver] impl MyServer { ... }`",
                ),
                Err(_) => e,
            };
            let error = e.to_compile_error();
            return quote!(#input #error);
        }
    };
    let args = attr::parse_impl_args(args, &mut errs);
    let generated = match model::build(&mut item, args, &mut errs) {
        Some(mut server) => {
            check::check(&mut server, &mut errs);
            expand(&server)
        }
        None => TokenStream::new(),
    };
    let errors = errs.to_compile_errors();
    quote! {
        #item
        #generated
        #errors
    }
}

fn item_span(item: &syn::Item) -> Span {
    match item {
        syn::Item::Fn(f) => f.sig.ident.span(),
        syn::Item::Struct(s) => s.ident.span(),
        syn::Item::Enum(e) => e.ident.span(),
        syn::Item::Trait(t) => t.ident.span(),
        syn::Item::Mod(m) => m.ident.span(),
        other => other.span(),
    }
}

fn expand(server: &Server) -> TokenStream {
    let server_impl = server_impl(server);
    let start = start(server);
    let client = client(server);
    quote! {
        #server_impl
        #start
        #client
    }
}

fn wire_bytes(h: &Handler) -> LitByteStr {
    LitByteStr::new(h.wire.as_bytes(), h.wire_span)
}

fn wire_str(h: &Handler) -> LitStr {
    LitStr::new(&h.wire, h.wire_span)
}

fn arg_ident(i: usize) -> syn::Ident {
    format_ident!("__fdserver_arg_{}", i)
}

fn server_impl(server: &Server) -> TokenStream {
    let self_ty = &server.self_ty;
    let client = &server.client;
    let arms = server.handlers.iter().filter(|h| h.valid).map(dispatch_arm);

    let signal_handlers: Vec<_> = server.signal_handlers.iter().filter(|s| s.valid).collect();
    let signals_const = if signal_handlers.is_empty() {
        TokenStream::new()
    } else {
        let entries = signal_handlers.iter().flat_map(|s| {
            let cfgs = &s.cfgs;
            s.variants
                .iter()
                .map(move |v| quote!(#(#cfgs)* ::fdserver::Signal::#v))
        });
        quote! {
            const SIGNALS: &'static [::fdserver::Signal] = &[#(#entries),*];
        }
    };
    let handle_signal = if signal_handlers.is_empty() {
        TokenStream::new()
    } else {
        let arms = signal_handlers.iter().map(|s| {
            let cfgs = &s.cfgs;
            let ident = &s.ident;
            let variants = &s.variants;
            let args = s.args.iter().map(|a| match a {
                SignalArg::Ctx => quote!(__fdserver_ctx),
                SignalArg::Signal => quote!(__fdserver_signal),
            });
            quote! {
                #(#cfgs)*
                #(::fdserver::Signal::#variants)|* => {
                    Self::#ident(self, #(#args),*);
                }
            }
        });
        quote! {
            fn handle_signal(
                &mut self,
                __fdserver_ctx: &mut ::fdserver::Context<'_>,
                __fdserver_signal: ::fdserver::Signal,
            ) {
                #[allow(unreachable_patterns)]
                match __fdserver_signal {
                    #(#arms)*
                    _ => {}
                }
            }
        }
    };
    let hooks = server.hooks.iter().filter(|h| h.valid).map(|h| {
        let cfgs = &h.cfgs;
        let ident = &h.ident;
        match h.kind {
            HookKind::BeforeFork => quote! {
                #(#cfgs)*
                fn before_fork(&mut self) {
                    Self::#ident(self)
                }
            },
            HookKind::Initialize => {
                // Spanned on the hook's return type, where a wrong type is reported.
                let ret = &h.ret;
                let call = quote_spanned! {ret.span()=>
                    ::fdserver::__private::hook_result(__fdserver_result)
                };
                quote! {
                    #(#cfgs)*
                    fn initialize_server(
                        &mut self,
                    ) -> ::core::result::Result<(), ::fdserver::BoxError> {
                        let __fdserver_result: #ret = Self::#ident(self);
                        #call
                    }
                }
            }
            HookKind::Finalize => quote! {
                #(#cfgs)*
                fn finalize_server(&mut self) {
                    Self::#ident(self)
                }
            },
            HookKind::Sandbox => {
                // Spanned on the hook's return type, where a wrong type is reported. The method
                // exists only with fdserver's `sandbox` feature: the pass-through macro turns it
                // into a compile error naming the feature otherwise.
                let ret = &h.ret;
                let call = quote_spanned! {ret.span()=>
                    ::fdserver::__private::sandbox_result(__fdserver_result)
                };
                let item = quote! {
                    #(#cfgs)*
                    fn sandbox(
                        &self,
                    ) -> ::core::option::Option<::fdserver::sandbox::Sandbox> {
                        let __fdserver_result: #ret = Self::#ident(self);
                        #call
                    }
                };
                // The pass-through macro is invoked at the hook's `#[fdserver(sandbox)]`, so that
                // its error without the feature points there, not at `#[fdserver]`.
                quote_spanned! {h.attr_span=>
                    ::fdserver::__fdserver_with_sandbox_feature! { #item }
                }
            }
        }
    });

    quote! {
        #[automatically_derived]
        #[allow(deprecated)] // calling a deprecated handler is not the user's doing
        impl ::fdserver::Server for #self_ty {
            type Client = #client;
            #signals_const

            fn handle(
                &mut self,
                __fdserver_ctx: &mut ::fdserver::Context<'_>,
                __fdserver_msg: ::fdserver::Message<'_>,
            ) -> ::core::result::Result<(), ::fdserver::RemoteError> {
                match __fdserver_msg.name() {
                    #(#arms)*
                    __fdserver_other => ::core::result::Result::Err(
                        ::fdserver::RemoteError::unknown_message(__fdserver_other),
                    ),
                }
            }

            #handle_signal
            #(#hooks)*
        }
    }
}

fn dispatch_arm(h: &Handler) -> TokenStream {
    let cfgs = &h.cfgs;
    let ident = &h.ident;
    let bytes = wire_bytes(h);
    let wire = wire_str(h);
    let values: Vec<(usize, &model::ValueParam)> = h.values().enumerate().collect();
    let names = values.iter().map(|(_, v)| v.ident.unraw_string());
    let decode = if values.is_empty() {
        quote! {
            ::fdserver::__private::expect_no_arguments(__fdserver_msg, #wire)?;
        }
    } else {
        let forms = values.iter().map(|(_, v)| {
            let ty = &v.ty;
            quote_spanned!(ty.span()=> <#ty as ::fdserver::args::FromArg<'_>>::FORM)
        });
        let takes = values.iter().map(|(i, v)| {
            let ty = &v.ty;
            quote_spanned!(ty.span()=> __fdserver_dec.take::<#ty>(#i))
        });
        let binds = values.iter().map(|(i, _)| {
            let a = arg_ident(*i);
            quote!(::core::option::Option::Some(#a))
        });
        // Out-of-band values are received into a store first, which borrowed parameters
        // (`&[u8]`) point into for the duration of the call.
        quote! {
            let mut __fdserver_store = ::fdserver::__private::PooledStore::take();
            let __fdserver_args = {
                let mut __fdserver_dec = ::fdserver::__private::Decoder::request(
                    __fdserver_ctx,
                    __fdserver_msg,
                    #wire,
                    &[#(#names),*],
                    &[#(#forms),*],
                    &mut __fdserver_store,
                );
                let __fdserver_args = (#(#takes,)*);
                __fdserver_dec.finish_request()?;
                __fdserver_args
            };
            let (#(#binds,)*) = __fdserver_args else {
                return ::core::result::Result::Err(::fdserver::__private::internal(#wire));
            };
        }
    };
    let mut n = 0;
    let call_args = h.args.iter().map(|a| match a {
        HandlerArg::Ctx => quote!(__fdserver_ctx),
        HandlerArg::Value(_) => {
            let a = arg_ident(n);
            n += 1;
            quote!(#a)
        }
    });
    let ret = &h.ret;
    let send = if h.client_err.is_some() {
        quote_spanned! {ret.span()=>
            ::fdserver::__private::reply_typed::<#ret>(__fdserver_ctx, #wire, __fdserver_ret)
        }
    } else {
        // `Result<T, E: WireError>` sends `E` as itself, anything else goes through `Reply`
        // (autoref specialisation: the first applicable impl wins).
        let select = quote_spanned! {ret.span()=>
            (&::fdserver::__private::ReplySelect::<#ret>::new())
                .__fdserver_send(__fdserver_ctx, #wire, __fdserver_ret)
        };
        quote! {{
            use ::fdserver::__private::{SendReply as _, SendWireError as _};
            #select
        }}
    };
    quote! {
        #(#cfgs)*
        #bytes => {
            #decode
            let __fdserver_ret = Self::#ident(self, #(#call_args),*);
            #send
        }
    }
}

trait UnrawString {
    fn unraw_string(&self) -> String;
}

impl UnrawString for syn::Ident {
    fn unraw_string(&self) -> String {
        use syn::ext::IdentExt;
        self.unraw().to_string()
    }
}

fn start(server: &Server) -> TokenStream {
    if !server.gen_start {
        return TokenStream::new();
    }
    let self_ty = &server.self_ty;
    let client = &server.client;
    let doc = format!(
        "Forks this server into a child process and returns its client, `{client}`, once the \
         server's `initialize` hook has succeeded (generated by `#[fdserver]`; the same as \
         `fdserver::Server::start`). For options (time-outs, descriptors to keep) use \
         `fdserver::Builder::new().start(&mut server)`."
    );
    quote! {
        #[automatically_derived]
        #[allow(dead_code)]
        impl #self_ty {
            #[doc = #doc]
            pub fn start(&mut self) -> ::core::result::Result<#client, ::fdserver::Error> {
                ::fdserver::Builder::new().start(self)
            }
        }
    }
}

fn client(server: &Server) -> TokenStream {
    let client = &server.client;
    let vis = &server.client_vis;
    let name = server.self_name.to_string();
    let client_name = client.to_string();
    let doc = format!(
        "The client of a `{name}` server, generated by `#[fdserver]`.\n\n\
         `{name}::start` forks the server and returns this client. Each handler of `{name}` has \
         a method here with the same parameters, which sends the handler's message and waits \
         for its reply. Dropping the client stops the server (see `fdserver::ServerHandle`).\n\n\
         `C` is what it talks through (`fdserver::Connection`): `fdserver::ServerHandle` (the \
         default) for a server fdserver started (forked, or spawned with `fdserver::Spawn`), \
         or an `fdserver::Channel` to any peer that speaks the protocol: \
         `{client_name}::from(channel)`."
    );
    let client_name_lit = LitStr::new(&client_name, Span::call_site());
    let stubs = server.handlers.iter().filter(|h| h.valid).map(stub);
    quote! {
        #[doc = #doc]
        #vis struct #client<C = ::fdserver::ServerHandle> {
            __fdserver_conn: C,
            __fdserver_state: ::fdserver::__private::ClientState,
        }

        #[automatically_derived]
        impl ::core::convert::From<::fdserver::ServerHandle> for #client<::fdserver::ServerHandle> {
            fn from(handle: ::fdserver::ServerHandle) -> Self {
                #client {
                    __fdserver_conn: handle,
                    __fdserver_state: ::fdserver::__private::ClientState::new(),
                }
            }
        }

        #[automatically_derived]
        impl ::core::convert::From<::fdserver::Channel> for #client<::fdserver::Channel> {
            fn from(channel: ::fdserver::Channel) -> Self {
                #client {
                    __fdserver_conn: channel,
                    __fdserver_state: ::fdserver::__private::ClientState::new(),
                }
            }
        }

        #[automatically_derived]
        impl<C: ::core::fmt::Debug> ::core::fmt::Debug for #client<C> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(#client_name_lit)
                    .field("connection", &self.__fdserver_conn)
                    .finish()
            }
        }

        #[automatically_derived]
        #[allow(dead_code)]
        impl #client<::fdserver::ServerHandle> {
            /// The server's process id.
            pub fn pid(&self) -> u32 {
                self.__fdserver_conn.pid()
            }

            /// Stops the server: closes the connection, then SIGTERM, then SIGKILL, waiting
            /// between each (see `fdserver::ServerHandle::stop`), and reaps it.
            pub fn stop(self) -> ::core::result::Result<::fdserver::Stopped, ::fdserver::Error> {
                self.__fdserver_conn.stop()
            }

            /// `stop` with other grace periods.
            pub fn stop_with(
                self,
                options: ::fdserver::StopOptions,
            ) -> ::core::result::Result<::fdserver::Stopped, ::fdserver::Error> {
                self.__fdserver_conn.stop_with(options)
            }

            /// The untyped handle (`call`, `with_channel`, `try_wait`, `pidfd`, ...).
            pub fn handle(&self) -> &::fdserver::ServerHandle {
                &self.__fdserver_conn
            }

            /// The untyped handle, mutably.
            pub fn handle_mut(&mut self) -> &mut ::fdserver::ServerHandle {
                &mut self.__fdserver_conn
            }

            /// Gives up the typed client for the untyped handle.
            pub fn into_handle(self) -> ::fdserver::ServerHandle {
                self.__fdserver_conn
            }

            /// Sends a signal to the server (through its pidfd).
            pub fn signal(
                &self,
                signal: ::fdserver::Signal,
            ) -> ::core::result::Result<(), ::fdserver::Error> {
                self.__fdserver_conn.signal(signal)
            }
        }

        #[automatically_derived]
        #[allow(dead_code)]
        impl<C: ::fdserver::Connection> #client<C> {
            /// The raw channel to the server, for messages the typed methods do not cover.
            pub fn channel(&mut self) -> &mut ::fdserver::Channel {
                ::fdserver::Connection::channel(&mut self.__fdserver_conn)
            }

            /// Sets a deadline for each read and write of every call (`None`: wait forever).
            /// A call that times out breaks the connection (see `fdserver::ServerHandle::set_timeout`).
            pub fn set_timeout(&mut self, timeout: ::core::option::Option<::std::time::Duration>) {
                ::fdserver::Connection::channel(&mut self.__fdserver_conn).set_timeout(timeout)
            }

            /// Gives up the typed client for what it talks through (the `ServerHandle` or the
            /// `Channel`).
            pub fn into_connection(self) -> C {
                self.__fdserver_conn
            }

            #(#stubs)*
        }
    }
}

/// The stub's parameter list (`name: Type` as the caller passes it). Shared by every stub
/// generator, so that other front ends (async) take the same arguments.
fn stub_params(values: &[&model::ValueParam]) -> Vec<TokenStream> {
    values
        .iter()
        .map(|v| {
            let ident = &v.ident;
            let ty = v.client.stub_type(&v.ty);
            quote!(#ident: #ty)
        })
        .collect()
}

/// Statements turning each stub parameter into a value implementing `ToArg`, then the array
/// expression of the encoded arguments (`[Encoded; N]`), in parameter order. A type that cannot
/// be sent is reported on that type.
fn stub_arguments(values: &[&model::ValueParam]) -> (TokenStream, TokenStream) {
    let conversions = values.iter().map(|v| v.client.conversion(&v.ident));
    let encodes = values.iter().map(|v| {
        let mut ident = v.ident.clone();
        let span = match v.client {
            model::ClientTy::Same | model::ClientTy::Json => v.ty.span(),
            _ => Span::call_site(),
        };
        // Where errors point; the name still resolves to the stub's parameter (hygiene kept).
        ident.set_span(ident.span().located_at(span));
        quote_spanned!(span=> ::fdserver::__private::encode(&#ident))
    });
    (quote!(#(#conversions)*), quote!([#(#encodes),*]))
}

/// The stub's return type and the `__private` function that performs the call.
fn stub_result(h: &Handler) -> (TokenStream, TokenStream) {
    let ok = &h.client_ret;
    let n = h.values().count();
    match &h.client_err {
        Some(err) => (
            quote!(::core::result::Result<#ok, ::fdserver::CallError<#err>>),
            quote!(::fdserver::__private::call_typed::<#ok, #err, #n>),
        ),
        None => (
            quote!(::core::result::Result<#ok, ::fdserver::Error>),
            quote!(::fdserver::__private::call::<#ok, #n>),
        ),
    }
}

fn stub(h: &Handler) -> TokenStream {
    let cfgs = &h.cfgs;
    let docs = &h.docs;
    let ident = &h.ident;
    let wire = wire_str(h);
    let values: Vec<&model::ValueParam> = h.values().collect();
    let params = stub_params(&values);
    let names = values.iter().map(|v| v.ident.unraw_string());
    let (conversions, arguments) = stub_arguments(&values);
    let (ret, call) = stub_result(h);
    let arg_list = if values.is_empty() {
        "no arguments".to_owned()
    } else {
        values
            .iter()
            .map(|v| format!("`{}`", v.ident.unraw_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let errors = if h.client_err.is_some() {
        "the handler's errors arrive as `fdserver::CallError::Handler`, fdserver's own as \
         `fdserver::CallError::Fdserver`"
    } else {
        "the server's errors arrive as `fdserver::Error::Remote`"
    };
    let wire_doc = format!(
        "Sends the message `{}` ({arg_list}) and returns the handler's reply; {errors}.",
        h.wire.escape_default()
    );
    let separator = if !docs.iter().any(|a| a.path().is_ident("doc")) {
        TokenStream::new()
    } else {
        quote!(#[doc = ""])
    };
    quote! {
        #(#cfgs)*
        #(#docs)*
        #separator
        #[doc = #wire_doc]
        pub fn #ident(&mut self, #(#params),*) -> #ret {
            #conversions
            #call(
                &mut self.__fdserver_conn,
                &mut self.__fdserver_state,
                #wire,
                &[#(#names),*],
                #arguments,
            )
        }
    }
}
