//! What a notice says by e-mail, in Korean or English, naming the library;
//! dates and times in the library's time zone.

use chrono_tz::Tz;
use rentalbook_plumbing::time::Timestamp;
use rentalbook_proto::notice::v1::NoticeKind;

use crate::domain::Language;

/// The facts a notice's words are made of.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub kind: NoticeKind,
    pub book_title: &'a str,
    pub barcode: &'a str,
    pub deadline: Option<Timestamp>,
}

/// An e-mail's subject and plain-text body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text {
    pub subject: String,
    pub body: String,
}

fn when(at: Option<Timestamp>, tz: Tz, language: Language) -> String {
    let Some(at) = at else {
        return String::new();
    };
    let local = at.with_timezone(&tz);
    match language {
        Language::Ko => local.format("%Y년 %-m월 %-d일 %H:%M").to_string(),
        Language::En => local.format("%-d %B %Y, %H:%M").to_string(),
    }
}

/// The words of a notice for a member reading `language`.
pub fn render(facts: &Facts<'_>, language: Language, library: &str, tz: Tz) -> Text {
    let title = if facts.book_title.is_empty() {
        match language {
            Language::Ko => "예약하신 책".to_owned(),
            Language::En => "your book".to_owned(),
        }
    } else {
        facts.book_title.to_owned()
    };
    let deadline = when(facts.deadline, tz, language);
    let zone = tz.name();
    let (subject, lines): (String, Vec<String>) = match (language, facts.kind) {
        (Language::En, NoticeKind::HoldReady) => (
            format!("Ready for you: {title}"),
            vec![
                format!("Your hold on \"{title}\" is ready."),
                format!(
                    "Pick up copy {} at the desk by {deadline} ({zone}).",
                    facts.barcode
                ),
            ],
        ),
        (Language::Ko, NoticeKind::HoldReady) => (
            format!("예약하신 책이 준비되었습니다: {title}"),
            vec![
                format!("예약하신 「{title}」이(가) 준비되었습니다."),
                format!(
                    "{deadline}({zone})까지 대출 데스크에서 {}번 책을 받아 가세요.",
                    facts.barcode
                ),
            ],
        ),
        (Language::En, NoticeKind::DueSoon) => (
            format!("Due soon: {title}"),
            vec![
                format!("\"{title}\" is due back on {deadline} ({zone})."),
                "Return it by then, or renew it on My Page if nobody is waiting for it.".to_owned(),
            ],
        ),
        (Language::Ko, NoticeKind::DueSoon) => (
            format!("반납일이 다가옵니다: {title}"),
            vec![
                format!("「{title}」의 반납 기한은 {deadline}({zone})입니다."),
                "기한까지 반납하시거나, 기다리는 분이 없으면 My Page에서 연장하세요.".to_owned(),
            ],
        ),
        (Language::En, NoticeKind::Overdue) => (
            format!("Overdue: {title}"),
            vec![
                format!("\"{title}\" was due back on {deadline} ({zone})."),
                "Please return it as soon as you can.".to_owned(),
            ],
        ),
        (Language::Ko, NoticeKind::Overdue) => (
            format!("반납 기한이 지났습니다: {title}"),
            vec![
                format!("「{title}」의 반납 기한({deadline}, {zone})이 지났습니다."),
                "가능한 한 빨리 반납해 주세요.".to_owned(),
            ],
        ),
        (Language::En, NoticeKind::HoldExpired) => (
            format!("Hold expired: {title}"),
            vec![
                format!("Your hold on \"{title}\" was not picked up by {deadline} ({zone})."),
                "The copy went to the next member in line; you may reserve the book again."
                    .to_owned(),
            ],
        ),
        (Language::Ko, NoticeKind::HoldExpired) => (
            format!("예약이 만료되었습니다: {title}"),
            vec![
                format!("「{title}」 예약을 {deadline}({zone})까지 받아 가지 않아 만료되었습니다."),
                "책은 다음 분께 넘어갔습니다. 다시 예약하실 수 있습니다.".to_owned(),
            ],
        ),
        (_, NoticeKind::Unspecified) => (String::new(), Vec::new()),
    };
    Text {
        subject: format!("[{library}] {subject}"),
        body: format!("{}\n\n— {library}\n", lines.join("\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn facts(kind: NoticeKind) -> Facts<'static> {
        Facts {
            kind,
            book_title: "Kindred",
            barcode: "00001234",
            deadline: Some(
                DateTime::parse_from_rfc3339("2026-12-04T06:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc),
            ),
        }
    }

    #[test]
    fn a_hold_ready_notice_names_the_copy_and_the_deadline_in_the_members_language() {
        let tz: Tz = "Asia/Seoul".parse().unwrap();
        let en = render(
            &facts(NoticeKind::HoldReady),
            Language::En,
            "Mapo Library",
            tz,
        );
        assert_eq!(en.subject, "[Mapo Library] Ready for you: Kindred");
        assert!(en.body.contains("copy 00001234"), "{}", en.body);
        assert!(en.body.contains("4 December 2026, 15:00"), "{}", en.body);
        assert!(en.body.contains("Mapo Library"));
        let ko = render(
            &facts(NoticeKind::HoldReady),
            Language::Ko,
            "마포도서관",
            tz,
        );
        assert!(ko.subject.contains("준비되었습니다"), "{}", ko.subject);
        assert!(ko.body.contains("2026년 12월 4일 15:00"), "{}", ko.body);
        assert!(ko.body.contains("00001234"));
        assert!(ko.body.contains("마포도서관"));
    }

    #[test]
    fn every_kind_has_words_in_both_languages() {
        let tz: Tz = "UTC".parse().unwrap();
        for kind in [
            NoticeKind::HoldReady,
            NoticeKind::DueSoon,
            NoticeKind::Overdue,
            NoticeKind::HoldExpired,
        ] {
            for language in [Language::Ko, Language::En] {
                let text = render(&facts(kind), language, "L", tz);
                assert!(text.subject.contains("Kindred"), "{kind:?} {language:?}");
                assert!(text.body.len() > 20, "{kind:?} {language:?}");
            }
        }
        let untitled = Facts {
            book_title: "",
            ..facts(NoticeKind::DueSoon)
        };
        assert!(
            render(&untitled, Language::En, "L", tz)
                .subject
                .contains("your book")
        );
    }
}
