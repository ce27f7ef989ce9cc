"""Provider adapters: each speaks one upstream wire format and answers in OpenAI shapes."""
