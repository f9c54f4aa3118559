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
    let pool = pool(server);
    let asyncs = asyncs(server);
    quote! {
        #server_impl
        #start
        #client
        #pool
        #asyncs
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
         for its reply. Dropping the client stops the server in the background: the drop returns at \
         once (see `fdserver::ServerHandle`).\n\n\
         The type parameter is what it talks through (`fdserver::Connection`): `fdserver::ServerHandle` (the \
         default) for a server fdserver started (forked, or spawned with `fdserver::Spawn`), \
         or an `fdserver::Channel` to any peer that speaks the protocol: \
         `{client_name}::from(channel)`."
    );
    let client_name_lit = LitStr::new(&client_name, Span::call_site());
    let stubs = server.handlers.iter().filter(|h| h.valid).map(stub);
    quote! {
        #[doc = #doc]
        #vis struct #client<__FdserverC = ::fdserver::ServerHandle> {
            __fdserver_conn: __FdserverC,
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
        impl<__FdserverC: ::core::fmt::Debug> ::core::fmt::Debug for #client<__FdserverC> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(#client_name_lit)
                    .field("connection", &self.__fdserver_conn)
                    .finish()
            }
        }

        #[automatically_derived]
        impl ::fdserver::Client for #client<::fdserver::ServerHandle> {
            fn handle(&self) -> &::fdserver::ServerHandle {
                &self.__fdserver_conn
            }

            fn handle_mut(&mut self) -> &mut ::fdserver::ServerHandle {
                &mut self.__fdserver_conn
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
        impl<__FdserverC: ::fdserver::Connection> #client<__FdserverC> {
            /// The raw channel to the server, for messages the typed methods do not cover.
            pub fn channel(&mut self) -> &mut ::fdserver::Channel {
                ::fdserver::Connection::channel(&mut self.__fdserver_conn)
            }

            /// Sets the deadline of each call, for the whole call (`None`: wait forever).
            /// A call that times out breaks the connection (see `fdserver::ServerHandle::set_timeout`).
            pub fn set_timeout(&mut self, timeout: ::core::option::Option<::std::time::Duration>) {
                ::fdserver::Connection::channel(&mut self.__fdserver_conn).set_timeout(timeout)
            }

            /// Gives up the typed client for what it talks through (the `ServerHandle` or the
            /// `Channel`).
            pub fn into_connection(self) -> __FdserverC {
                self.__fdserver_conn
            }

            #(#stubs)*
        }
    }
}

/// The typed pool: `{Server}Pool`, a `fdserver::Pool` of the typed client with one method per
/// handler, taking `&self`.
fn pool(server: &Server) -> TokenStream {
    let client = &server.client;
    let pool = &server.pool;
    let vis = &server.client_vis;
    let name = server.self_name.to_string();
    let doc = format!(
        "A pool of `{name}` servers, generated by `#[fdserver]`: callers on many threads share \
         it (`Clone`, `Send`, `Sync`), each call goes to an idle server, and a server that died, \
         timed out or broke its connection is replaced on the next use (see `fdserver::Pool`, \
         which this derefs to for `get`, `status`, `revive`...).\n\n\
         Each handler of `{name}` has a method here with the same parameters, taking `&self`. \
         A call whose server failed returns the error; only handlers marked \
         `#[fdserver(idempotent)]` are run once more, on another server."
    );
    let stubs = server.handlers.iter().filter(|h| h.valid).map(pool_stub);
    quote! {
        #[doc = #doc]
        #vis struct #pool(::fdserver::Pool<#client>);

        #[automatically_derived]
        impl ::core::clone::Clone for #pool {
            fn clone(&self) -> Self {
                #pool(::core::clone::Clone::clone(&self.0))
            }
        }

        #[automatically_derived]
        impl ::core::fmt::Debug for #pool {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::fmt::Debug::fmt(&self.0, f)
            }
        }

        #[automatically_derived]
        impl ::core::ops::Deref for #pool {
            type Target = ::fdserver::Pool<#client>;
            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        #[automatically_derived]
        impl ::core::convert::From<::fdserver::Pool<#client>> for #pool {
            fn from(pool: ::fdserver::Pool<#client>) -> Self {
                #pool(pool)
            }
        }

        #[automatically_derived]
        #[allow(dead_code)]
        impl #pool {
            /// Starts `options.size()` servers, each forked from `server` (kept by the pool:
            /// every start and restart forks a copy of it). For a factory, use
            /// `fdserver::Pool::start_with` and `From`.
            pub fn start<__FdserverS>(
                options: ::fdserver::PoolOptions,
                server: __FdserverS,
            ) -> ::core::result::Result<Self, ::fdserver::Error>
            where
                __FdserverS: ::fdserver::Server<Client = #client>
                    + ::core::marker::Send
                    + 'static,
            {
                ::fdserver::Pool::start(options, server).map(#pool)
            }

            #(#stubs)*
        }
    }
}

/// One method of the typed pool: the stub's parameters, `&self`; the arguments are encoded
/// once and sent by the server the pool picks (again on a second server for an idempotent
/// handler whose first server failed).
fn pool_stub(h: &Handler) -> TokenStream {
    let cfgs = &h.cfgs;
    let docs = &h.docs;
    let ident = &h.ident;
    let wire = wire_str(h);
    let values: Vec<&model::ValueParam> = h.values().collect();
    let params = stub_params(&values);
    let names = values.iter().map(|v| v.ident.unraw_string());
    let (conversions, arguments) = stub_arguments(&values);
    let (ret, call) = stub_result(h);
    let idempotent = h.idempotent;
    let retry_doc = if idempotent {
        "The handler is marked `idempotent`: if the call fails because its server failed, it \
         is run once more, on another server."
    } else {
        "If the call fails because its server failed, the error is returned (the server is \
         replaced on the next use)."
    };
    let wire_doc = format!(
        "Sends the message `{}` to an idle server of the pool and returns the handler's \
         reply. {retry_doc}",
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
        pub fn #ident(&self, #(#params),*) -> #ret {
            #conversions
            self.0.call_retrying(#idempotent, |__fdserver_client| {
                #call(
                    &mut __fdserver_client.__fdserver_conn,
                    &mut __fdserver_client.__fdserver_state,
                    #wire,
                    &[#(#names),*],
                    #arguments,
                )
            })
        }
    }
}

/// With fdserver's `tokio` feature (the items go through `__private::if_tokio!`, which drops
/// them without it): the async client `{Server}AsyncClient<C = AsyncServerHandle>`, with an
/// `async fn` per handler taking the handler's parameters; `{Server}::start_async`; and the
/// async pool `{Server}AsyncPool`.
fn asyncs(server: &Server) -> TokenStream {
    let self_ty = &server.self_ty;
    let vis = &server.client_vis;
    let client = &server.async_client;
    let pool = &server.async_pool;
    let name = server.self_name.to_string();
    let client_name = client.to_string();
    let client_name_lit = LitStr::new(&client_name, Span::call_site());
    let client_doc = format!(
        "The async client of a `{name}` server, generated by `#[fdserver]` (fdserver's `tokio` \
         feature).\n\n\
         `{name}::start_async` starts the server and returns this client. Each handler of \
         `{name}` has an `async fn` here with the handler's parameters, which sends its message \
         and awaits its reply through the tokio runtime. Dropping the client stops the server \
         in the background.\n\n\
         **Cancellation.** A call's future may be dropped at any `.await`. Dropped before any \
         byte of the request went out, it changed nothing. Dropped after part of the request \
         went out, the connection is broken: every later call fails with \
         `fdserver::Error::Broken` (`needs_restart()`). Dropped once the request was out, its \
         reply is read and discarded by the next call before that call sends anything, so no \
         call ever gets another's reply (the next call waits for the abandoned one to finish; \
         a pool replaces such a server instead).\n\n\
         The type parameter is what it talks through (`fdserver::AsyncConnection`): \
         `fdserver::AsyncServerHandle` (the default), or an `fdserver::AsyncChannel` to any \
         peer: `{client_name}::from(channel)`."
    );
    let pool_doc = format!(
        "An async pool of `{name}` servers, generated by `#[fdserver]` (fdserver's `tokio` \
         feature): tasks share it, each call goes to an idle server, and a server that failed \
         is replaced on the next use (see `fdserver::AsyncPool`, which this derefs to). Each \
         handler of `{name}` has an `async fn` here taking `&self`; a failed call is run once \
         more on another server only for handlers marked `#[fdserver(idempotent)]`."
    );
    let stubs = server.handlers.iter().filter(|h| h.valid).map(async_stub);
    let pool_stubs = server
        .handlers
        .iter()
        .filter(|h| h.valid)
        .map(async_pool_stub);
    let start_async = if server.gen_start {
        let doc = format!(
            "Starts this server (forked now, inline) and returns a future that resolves to its \
             async client, `{client_name}`, once the server's `initialize` hook has succeeded \
             (fdserver's `tokio` feature; see `fdserver::Builder::start_async`). The future does \
             not borrow the server value."
        );
        quote! {
            #[automatically_derived]
            #[allow(dead_code)]
            impl #self_ty {
                #[doc = #doc]
                pub fn start_async(
                    &mut self,
                ) -> impl ::core::future::Future<
                    Output = ::core::result::Result<#client, ::fdserver::Error>,
                > + ::core::marker::Send
                       + 'static {
                    let __fdserver_start = ::fdserver::Builder::new().start_async(self);
                    async move { __fdserver_start.await.map(<#client as ::core::convert::From<::fdserver::AsyncServerHandle>>::from) }
                }
            }
        }
    } else {
        TokenStream::new()
    };
    quote! {
        ::fdserver::__private::if_tokio! {
            #[doc = #client_doc]
            #vis struct #client<__FdserverC = ::fdserver::AsyncServerHandle> {
                __fdserver_conn: __FdserverC,
                __fdserver_state: ::fdserver::__private::ClientState,
            }

            #[automatically_derived]
            impl ::core::convert::From<::fdserver::AsyncServerHandle>
                for #client<::fdserver::AsyncServerHandle>
            {
                fn from(handle: ::fdserver::AsyncServerHandle) -> Self {
                    #client {
                        __fdserver_conn: handle,
                        __fdserver_state: ::fdserver::__private::ClientState::new(),
                    }
                }
            }

            #[automatically_derived]
            impl ::core::convert::From<::fdserver::AsyncChannel> for #client<::fdserver::AsyncChannel> {
                fn from(channel: ::fdserver::AsyncChannel) -> Self {
                    #client {
                        __fdserver_conn: channel,
                        __fdserver_state: ::fdserver::__private::ClientState::new(),
                    }
                }
            }

            #[automatically_derived]
            impl<__FdserverC: ::core::fmt::Debug> ::core::fmt::Debug for #client<__FdserverC> {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.debug_struct(#client_name_lit)
                        .field("connection", &self.__fdserver_conn)
                        .finish()
                }
            }

            #[automatically_derived]
            impl ::fdserver::AsyncClient for #client<::fdserver::AsyncServerHandle> {
                fn handle(&self) -> &::fdserver::AsyncServerHandle {
                    &self.__fdserver_conn
                }

                fn handle_mut(&mut self) -> &mut ::fdserver::AsyncServerHandle {
                    &mut self.__fdserver_conn
                }
            }

            #[automatically_derived]
            #[allow(dead_code)]
            impl #client<::fdserver::AsyncServerHandle> {
                /// The server's process id.
                pub fn pid(&self) -> u32 {
                    self.__fdserver_conn.pid()
                }

                /// Stops the server without blocking the runtime (see
                /// `fdserver::AsyncServerHandle::stop`).
                pub async fn stop(self) -> ::core::result::Result<::fdserver::Stopped, ::fdserver::Error> {
                    self.__fdserver_conn.stop().await
                }

                /// `stop` with other grace periods.
                pub async fn stop_with(
                    self,
                    options: ::fdserver::StopOptions,
                ) -> ::core::result::Result<::fdserver::Stopped, ::fdserver::Error> {
                    self.__fdserver_conn.stop_with(options).await
                }

                /// The untyped handle.
                pub fn handle(&self) -> &::fdserver::AsyncServerHandle {
                    &self.__fdserver_conn
                }

                /// The untyped handle, mutably.
                pub fn handle_mut(&mut self) -> &mut ::fdserver::AsyncServerHandle {
                    &mut self.__fdserver_conn
                }

                /// Gives up the typed client for the untyped handle.
                pub fn into_handle(self) -> ::fdserver::AsyncServerHandle {
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
            impl<__FdserverC: ::fdserver::AsyncConnection> #client<__FdserverC> {
                /// The raw channel to the server, for messages the typed methods do not cover.
                pub fn channel(&mut self) -> &mut ::fdserver::AsyncChannel {
                    ::fdserver::AsyncConnection::channel(&mut self.__fdserver_conn)
                }

                /// Sets the deadline of each call, for the whole call (`None`: wait forever).
                pub fn set_timeout(&mut self, timeout: ::core::option::Option<::std::time::Duration>) {
                    ::fdserver::AsyncConnection::channel(&mut self.__fdserver_conn).set_timeout(timeout)
                }

                /// Gives up the typed client for what it talks through.
                pub fn into_connection(self) -> __FdserverC {
                    self.__fdserver_conn
                }

                #(#stubs)*
            }

            #start_async

            #[doc = #pool_doc]
            #vis struct #pool(::fdserver::AsyncPool<#client>);

            #[automatically_derived]
            impl ::core::clone::Clone for #pool {
                fn clone(&self) -> Self {
                    #pool(::core::clone::Clone::clone(&self.0))
                }
            }

            #[automatically_derived]
            impl ::core::fmt::Debug for #pool {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    ::core::fmt::Debug::fmt(&self.0, f)
                }
            }

            #[automatically_derived]
            impl ::core::ops::Deref for #pool {
                type Target = ::fdserver::AsyncPool<#client>;
                fn deref(&self) -> &Self::Target {
                    &self.0
                }
            }

            #[automatically_derived]
            impl ::core::convert::From<::fdserver::AsyncPool<#client>> for #pool {
                fn from(pool: ::fdserver::AsyncPool<#client>) -> Self {
                    #pool(pool)
                }
            }

            #[automatically_derived]
            #[allow(dead_code)]
            impl #pool {
                /// Starts `options.size()` servers, each forked from `server` (see
                /// `fdserver::AsyncPool::start`).
                pub async fn start<__FdserverS>(
                    options: ::fdserver::PoolOptions,
                    server: __FdserverS,
                ) -> ::core::result::Result<Self, ::fdserver::Error>
                where
                    __FdserverS: ::fdserver::Server + ::core::marker::Send + 'static,
                {
                    ::fdserver::AsyncPool::start(options, server).await.map(#pool)
                }

                #(#pool_stubs)*
            }
        }
    }
}

/// The `__private` function an async stub awaits, and the stub's return type.
fn async_stub_result(h: &Handler) -> (TokenStream, TokenStream) {
    let ok = &h.client_ret;
    let n = h.values().count();
    match &h.client_err {
        Some(err) => (
            quote!(::core::result::Result<#ok, ::fdserver::CallError<#err>>),
            quote!(::fdserver::__private::call_async_typed::<#ok, #err, #n>),
        ),
        None => (
            quote!(::core::result::Result<#ok, ::fdserver::Error>),
            quote!(::fdserver::__private::call_async::<#ok, #n>),
        ),
    }
}

/// One `async fn` of the async client: the sync stub's parameters and result.
fn async_stub(h: &Handler) -> TokenStream {
    let cfgs = &h.cfgs;
    let docs = &h.docs;
    let ident = &h.ident;
    let wire = wire_str(h);
    let values: Vec<&model::ValueParam> = h.values().collect();
    let params = stub_params(&values);
    let names = values.iter().map(|v| v.ident.unraw_string());
    let (conversions, arguments) = stub_arguments(&values);
    let (ret, call) = async_stub_result(h);
    let wire_doc = format!(
        "Sends the message `{}` and awaits the handler's reply (see the type's docs on \
         cancellation).",
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
        pub async fn #ident(&mut self, #(#params),*) -> #ret {
            #conversions
            #call(
                &mut self.__fdserver_conn,
                &mut self.__fdserver_state,
                #wire,
                &[#(#names),*],
                #arguments,
            )
            .await
        }
    }
}

/// One `async fn` of the async pool.
fn async_pool_stub(h: &Handler) -> TokenStream {
    let cfgs = &h.cfgs;
    let docs = &h.docs;
    let ident = &h.ident;
    let wire = wire_str(h);
    let values: Vec<&model::ValueParam> = h.values().collect();
    let params = stub_params(&values);
    let names: Vec<String> = values.iter().map(|v| v.ident.unraw_string()).collect();
    let (conversions, arguments) = stub_arguments(&values);
    let (ret, call) = async_stub_result(h);
    let idempotent = h.idempotent;
    let wire_doc = format!(
        "Sends the message `{}` to an idle server of the pool and awaits the handler's reply{}.",
        h.wire.escape_default(),
        if idempotent {
            " (marked `idempotent`: run once more on another server if its server fails)"
        } else {
            ""
        }
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
        pub async fn #ident(&self, #(#params),*) -> #ret {
            #conversions
            let mut __fdserver_retried = false;
            loop {
                let mut __fdserver_guard = self.0.get().await?;
                let __fdserver_client = &mut *__fdserver_guard;
                let __fdserver_r = #call(
                    &mut __fdserver_client.__fdserver_conn,
                    &mut __fdserver_client.__fdserver_state,
                    #wire,
                    &[#(#names),*],
                    #arguments,
                )
                .await;
                if ::fdserver::AsyncPool::__retry(
                    &mut __fdserver_guard,
                    &__fdserver_r,
                    #idempotent,
                    &mut __fdserver_retried,
                ) {
                    continue;
                }
                return __fdserver_r;
            }
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
