"""Help desks: tickets and CRM leads on escalation, and where they are sent.

- :mod:`runtime.helpdesk.tickets`: what an escalation's ticket says (subject, extractive summary,
  links, priority from the trigger, category from the signal) and when it carries a lead; written
  and enqueued to every destination in the escalation's transaction.
- :mod:`runtime.helpdesk.destinations`: the three destination protocols (a signed generic
  webhook, Zendesk's Tickets API, a Slack message): the request for an event, and how to read
  the answer.
- :mod:`runtime.helpdesk.sender`: the outbox sender for help-desk rows (same leases, backoff and
  dead letters as the channel senders).
- :mod:`runtime.helpdesk.notices`: emails to the tenant's owners through the email channel's
  outbox (credit alerts).
"""
