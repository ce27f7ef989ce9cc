"""Provider adapters: each speaks one upstream wire format and answers in OpenAI shapes
(`openai`, `anthropic`), on shared HTTP and SSE plumbing (`base`); what an upstream answer must
look like, and chunk assembly (`shapes`); adapters built from deployments (`factory`).

May import: `services.config`, `services.errors`, `services.platform`."""
