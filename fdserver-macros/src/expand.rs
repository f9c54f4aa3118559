//! Code generation: the `Server` impl (dispatch, signals, hooks), the inherent `start`, and the
//! typed client. Every path is absolute and every local is prefixed `__fdserver_`, so the code
//! works under `#![no_implicit_prelude]` and next to the user's own `Result` alias.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
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
                quote! {
                    ::fdserver::__fdserver_with_sandbox_feature! {
                        #(#cfgs)*
                        fn sandbox(
                            &self,
                        ) -> ::core::option::Option<::fdserver::sandbox::Sandbox> {
                            let __fdserver_result: #ret = Self::#ident(self);
                            #call
                        }
                    }
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
            ::fdserver::__private::Decoder::request(
                __fdserver_ctx, __fdserver_msg, #wire, &[],
            ).finish_request()?;
        }
    } else {
        let takes = values.iter().map(|(i, v)| {
            let ty = &v.ty;
            quote_spanned!(ty.span()=> __fdserver_dec.take::<#ty>(#i))
        });
        let binds = values.iter().map(|(i, _)| {
            let a = arg_ident(*i);
            quote!(::core::option::Option::Some(#a))
        });
        quote! {
            let __fdserver_args = {
                let mut __fdserver_dec = ::fdserver::__private::Decoder::request(
                    __fdserver_ctx, __fdserver_msg, #wire, &[#(#names),*],
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
    let reply = quote_spanned!(ret.span()=> ::fdserver::__private::reply::<#ret>);
    quote! {
        #(#cfgs)*
        #bytes => {
            #decode
            let __fdserver_ret = Self::#ident(self, #(#call_args),*);
            #reply(__fdserver_ctx, __fdserver_ret)
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
         for its reply. Dropping the client stops the server (see `fdserver::ServerHandle`)."
    );
    let client_name_lit = LitStr::new(&client_name, Span::call_site());
    let stubs = server.handlers.iter().filter(|h| h.valid).map(stub);
    quote! {
        #[doc = #doc]
        #vis struct #client {
            __fdserver_handle: ::fdserver::ServerHandle,
            __fdserver_state: ::fdserver::__private::ClientState,
        }

        #[automatically_derived]
        impl ::core::convert::From<::fdserver::ServerHandle> for #client {
            fn from(handle: ::fdserver::ServerHandle) -> Self {
                #client {
                    __fdserver_handle: handle,
                    __fdserver_state: ::fdserver::__private::ClientState::new(),
                }
            }
        }

        #[automatically_derived]
        impl ::core::fmt::Debug for #client {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(#client_name_lit)
                    .field("handle", &self.__fdserver_handle)
                    .finish()
            }
        }

        #[automatically_derived]
        #[allow(dead_code)]
        impl #client {
            /// The server's process id.
            pub fn pid(&self) -> u32 {
                self.__fdserver_handle.pid()
            }

            /// Stops the server: closes the connection, then SIGTERM, then SIGKILL, waiting
            /// between each (see `fdserver::ServerHandle::stop`), and reaps it.
            pub fn stop(self) -> ::core::result::Result<::fdserver::Stopped, ::fdserver::Error> {
                self.__fdserver_handle.stop()
            }

            /// `stop` with other grace periods.
            pub fn stop_with(
                self,
                options: ::fdserver::StopOptions,
            ) -> ::core::result::Result<::fdserver::Stopped, ::fdserver::Error> {
                self.__fdserver_handle.stop_with(options)
            }

            /// The raw channel to the server, for messages the typed methods do not cover.
            pub fn channel(&mut self) -> &mut ::fdserver::Channel {
                self.__fdserver_handle.channel()
            }

            /// The untyped handle (`call`, `with_channel`, `try_wait`, `pidfd`, ...).
            pub fn handle(&self) -> &::fdserver::ServerHandle {
                &self.__fdserver_handle
            }

            /// The untyped handle, mutably.
            pub fn handle_mut(&mut self) -> &mut ::fdserver::ServerHandle {
                &mut self.__fdserver_handle
            }

            /// Gives up the typed client for the untyped handle.
            pub fn into_handle(self) -> ::fdserver::ServerHandle {
                self.__fdserver_handle
            }

            /// Sets a deadline for each read and write of every call (`None`: wait forever).
            /// A call that times out breaks the connection (see `fdserver::ServerHandle::set_timeout`).
            pub fn set_timeout(&mut self, timeout: ::core::option::Option<::std::time::Duration>) {
                self.__fdserver_handle.set_timeout(timeout)
            }

            /// Sends a signal to the server (through its pidfd).
            pub fn signal(
                &self,
                signal: ::fdserver::Signal,
            ) -> ::core::result::Result<(), ::fdserver::Error> {
                self.__fdserver_handle.signal(signal)
            }

            #(#stubs)*
        }
    }
}

fn stub(h: &Handler) -> TokenStream {
    let cfgs = &h.cfgs;
    let docs = &h.docs;
    let ident = &h.ident;
    let wire = wire_str(h);
    let values: Vec<&model::ValueParam> = h.values().collect();
    let params = values.iter().map(|v| {
        let ident = &v.ident;
        let ty = v.client.stub_type(&v.ty);
        quote!(#ident: #ty)
    });
    let conversions = values.iter().map(|v| v.client.conversion(&v.ident));
    // Each argument is encoded once; a type that cannot be sent is reported on that type.
    let encoded: Vec<_> = (0..values.len())
        .map(|i| format_ident!("__fdserver_enc_{}", i))
        .collect();
    let encodes = values.iter().zip(&encoded).map(|(v, e)| {
        let mut ident = v.ident.clone();
        let span = match v.client {
            model::ClientTy::Same => v.ty.span(),
            _ => Span::call_site(),
        };
        // Where errors point; the name still resolves to the stub's parameter (hygiene kept).
        ident.set_span(ident.span().located_at(span));
        let call = quote_spanned!(span=> ::fdserver::__private::encode(&#ident));
        quote!(let #e = #call;)
    });
    let client_ret = &h.client_ret;
    let arg_list = if values.is_empty() {
        "no arguments".to_owned()
    } else {
        values
            .iter()
            .map(|v| format!("`{}`", v.ident.unraw_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let wire_doc = format!(
        "Sends the message `{}` ({arg_list}) and returns the handler's reply; the server's \
         errors arrive as `fdserver::Error::Remote`.",
        h.wire.escape_default()
    );
    let separator = if !docs.iter().any(|a| a.path().is_ident("doc")) {
        TokenStream::new()
    } else {
        quote!(#[doc = ""])
    };
    let ret_tokens = client_ret.to_token_stream();
    quote! {
        #(#cfgs)*
        #(#docs)*
        #separator
        #[doc = #wire_doc]
        pub fn #ident(
            &mut self,
            #(#params),*
        ) -> ::core::result::Result<#ret_tokens, ::fdserver::Error> {
            #(#conversions)*
            #(#encodes)*
            let __fdserver_state = &mut self.__fdserver_state;
            self.__fdserver_handle.with_channel(|__fdserver_ch| {
                ::fdserver::__private::send_request(__fdserver_ch, #wire, [#(&#encoded),*])?;
                #(::fdserver::__private::send_out_of_band(__fdserver_ch, #wire, #encoded)?;)*
                ::fdserver::__private::read_reply::<#ret_tokens>(__fdserver_ch, __fdserver_state, #wire)
            })
        }
    }
}
