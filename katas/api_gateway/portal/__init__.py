"""The developer portal's parts that need no server: signed cookies and CSRF tokens, the sign-in throttle,
the usage API client and its per-minute view, the OpenAPI catalog of the backends, and server-side SVG
charts. The aiohttp application that wires them to the stores is katas.api_gateway.services.portal; its
templates and stylesheet are the files beside this module."""
