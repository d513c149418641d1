# syntax=docker/dockerfile:1
# product-size-service: a release build in a small, non-root runtime image.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: rebuilt only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# Then the service itself. Queries are checked at run time (no sqlx macros), so the build needs
# no database; migrations are embedded from migrations/.
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin product-size \
    && cp target/release/product-size /product-size

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /product-size /usr/local/bin/product-size
# distroless "nonroot"
USER 65532:65532
ENV BIND_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/product-size", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/product-size"]
CMD ["serve"]
